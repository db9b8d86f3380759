"""The HTML report, checked by its SVG and CSS (CI has no browser): what the sparsity chart
shows in dense phases, how the page fits a narrow screen, whole-number epoch ticks, one
precision per number, bar charts no taller than their labels. Built from a written
metrics.jsonl, without training (and without torch)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from acdc_recipe.formats.records import EpochEnded, RunStarted, record_to_dict
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.report.charts import (
    BOTTOM,
    CHAR_WIDTH,
    HEIGHT,
    LABEL_ANGLE,
    Series,
    bar_chart,
    line_chart,
)
from acdc_recipe.report.render import render_report
from acdc_recipe.runtime.events import MasksComputed, PhaseStarted

SPE = 10  # steps per epoch
# D0-1, S2-3, D4-5, S6-7: after each sparse phase the dense weights keep some exact zeros
SPARSITY = [0.0, 0.0, 0.9, 0.9, 0.25, 0.2, 0.9, 0.9]
CHANGED = [None, 0.0007812]
EMPTIED = {6: {"fc.weight": 3}}  # the first mask's record predates the count


def write_run(folder: Path) -> RunDir:
    run = RunDir(folder)
    folder.mkdir(exist_ok=True)
    phases = [("dense", 0, 2), ("sparse", 2, 4), ("dense", 4, 6), ("sparse", 6, 8)]
    records = [
        RunStarted(0, "narrow", 8, SPE, 8 * SPE, "cpu", 1, 1, None,
                   [{"kind": k, "start": a * SPE, "end": b * SPE} for k, a, b in phases],
                   [{"name": "fc.weight", "op": "Linear", "shape": [10, 64]}]),
    ]  # fmt: skip
    masks = iter(CHANGED)
    for epoch, sparsity in enumerate(SPARSITY):
        index = next(i for i, (_, a, b) in enumerate(phases) if a <= epoch < b)
        kind, start, _ = phases[index]
        if epoch == start:
            records.append(PhaseStarted(epoch * SPE, index, kind, 0.9 if kind == "sparse" else 0))
            if kind == "sparse":
                records.append(
                    MasksComputed(epoch * SPE, index, 0.9, 0.9, {"fc.weight": 0.9}, next(masks),
                                  None, 0.01, 0.002, EMPTIED.get(epoch))
                )  # fmt: skip
        records.append(
            EpochEnded((epoch + 1) * SPE, epoch, kind, 1.0, 1.0, 0.5, sparsity, 0.1, 0.1)
        )
    run.metrics.write_text("".join(json.dumps(record_to_dict(r)) + "\n" for r in records))
    return run


def charts_of(html: str) -> dict[str, str]:
    """Each inline SVG by its title."""
    found = {}
    for svg in re.findall(r"<svg .*?</svg>", html, re.DOTALL):
        title = re.search(r'font-weight="bold">([^<]+)<', svg)[1]
        found[title] = svg
    return found


def test_the_sparsity_chart_shows_the_zeros_dense_phases_keep(tmp_path):
    html = render_report(write_run(tmp_path)).read_text()
    chart = charts_of(html)["Sparsity of the prunable weights"]
    vertices = [p.split(",") for p in re.search(r'points="([^"]+)"', chart)[1].split()]
    xs, ys = [float(x) for x, _ in vertices], [float(y) for _, y in vertices]
    baseline, sparse = ys[0], ys[xs.index(xs[3]) + 1]  # 0% at the start; 90% after the mask
    # end of epochs 4 and 5 (dense): the 25% and 20% the run measured, not 0%
    dense = [y for x, y in zip(xs, ys, strict=True) if xs[0] < x and ys.count(y) == 1]
    assert len(dense) == 2 and all(sparse < y < baseline for y in dense)
    zero_to_ninety = (baseline - sparse) / 0.9
    assert [round((baseline - y) / zero_to_ninety, 3) for y in dense] == [0.25, 0.2]
    assert any(a == b for a, b in zip(xs, xs[1:]))  # the mask's jump is vertical


def test_the_page_scales_its_charts_to_a_narrow_screen(tmp_path):
    html = render_report(write_run(tmp_path)).read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert ".chart svg { display: block; max-width: 100%; height: auto; }" in html
    assert "padding: 0 16px" in html
    for title, svg in charts_of(html).items():
        width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())
        assert f'viewBox="0 0 {width} {height}"' in svg, title
        for x, label in re.findall(r'<text x="([\d.]+)" y="[\d.]+">([^<]+)</text>', svg):
            assert float(x) + CHAR_WIDTH * len(label) <= width, (title, label)  # legends fit


@pytest.mark.parametrize("epochs", [8, 20, 36, 100])
def test_epoch_axes_have_whole_number_ticks(epochs):
    svg = line_chart("t", "epoch", "y", [Series("s", [(0, 0.0), (epochs, 1.0)])])
    ticks = re.findall(rf'y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">([^<]+)</text>', svg)
    assert len(ticks) >= 4 and all(re.fullmatch(r"\d+", t) for t in ticks), ticks
    assert ticks[0] == "0" and int(ticks[-1]) <= epochs


def test_a_percentage_reads_the_same_in_charts_and_tables(tmp_path):
    html = render_report(write_run(tmp_path)).read_text()
    changed = charts_of(html)["Mask entries changed at each re-pruning"]
    assert ">0.08%</text>" in changed and "0.07812%" not in html
    assert "<td>0.08%</td>" in html  # the re-pruning log
    rows = re.findall(r"<tr><td>(\d+)</td><td>90.00%</td>.*?</tr>", html)
    assert rows == ["2", "6"]
    assert "<td>0.08%</td><td>3</td>" in html and "<td>–</td><td>–</td>" in html
    assert "0.0012%" in bar_chart("t", "y", [("a", 0.000012)])  # never a non-zero 0.00%


def test_a_bar_chart_ends_below_its_slanted_labels(tmp_path):
    for label in ("epoch 8", "layer4.2.conv3 Conv2d 512->2048 1x1"):
        svg = bar_chart("t", "y", [(label, 0.5), ("b", 0.25)])
        height = int(re.search(r'height="(\d+)"', svg)[1])
        bottom = HEIGHT - BOTTOM  # the plot's bottom edge
        slant = math.sin(math.radians(LABEL_ANGLE)) * CHAR_WIDTH * len(label)
        labels_end = bottom + 12 + slant + 12  # anchor, rotated text, the font's height
        assert labels_end <= height <= labels_end + 10, (label, height, labels_end)


def test_a_run_that_recorded_nothing_yet_is_reported_by_its_folder_name(tmp_path):
    run = RunDir(tmp_path / "started")
    run.path.mkdir()
    run.metrics.write_text("")
    html = render_report(run).read_text()
    assert "<h1>started</h1>" in html and "has not finished" in html


def test_the_report_imports_no_torch(tmp_path):
    write_run(tmp_path)
    code = (
        "import sys\nfrom acdc_recipe.cli.main import main\n"
        f"assert main(['report', {str(tmp_path)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
