"""What `acdc` shows: terminal lines, help, the compile table in a pipe, the HTML report."""

from __future__ import annotations

import json
import re

import pytest

from acdc_recipe.cli.main import main
from acdc_recipe.trainer.sinks import epoch_row

from .shell import TINY, acdc, one_line

# A quickstart whose learning rate jumps 1e12-fold at epoch 3: it diverges in epoch 3.
DIVERGES = ["--set", "epochs=12", "--set", "train.lr_schedule.name=multistep",
            "--set", "train.lr_schedule.milestones=[3]", "--set", "train.lr_schedule.gamma=1e12"]  # fmt: skip


def test_the_terminal_counts_epochs_as_the_schedule_does(tmp_path, capfd):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capfd.readouterr().out
    assert "epochs 0-5 x 12 steps" in out
    rows = [line.split() for line in out.splitlines() if re.match(r" +\d+/5 ", line)]
    assert [row[:2] for row in rows] == [
        ["0/5", "dense"], ["1/5", "dense"], ["2/5", "sparse"], ["3/5", "dense"], ["4/5", "sparse"],
        ["5/5", "sparse"]]  # fmt: skip
    assert "epoch 2 (step 24): sparse phase 1" in out and "epoch 6" not in out


def test_an_epoch_row_fits_in_80_columns(tmp_path, capfd):
    """The epoch table's header and rows, at the widest values a row can hold."""
    assert main(["run", str(TINY), "--out", str(tmp_path), "--set", "train.seed=3"]) == 0
    lines = capfd.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "phase"])
    widest = epoch_row(("199/199", "gradual", "12345.6789", "1234.5678", "100.00%", "100.00%",
                         "1.234e-05", "9999.9s"))  # fmt: skip
    rows = [line for line in lines if re.match(r" +\d+/5 ", line)]
    assert len(rows) == 6 and all(len(line) <= 80 for line in [lines[header], *rows, widest])
    assert lines[header].split() == ["epoch", "phase", "train", "loss", "val", "loss", "top-1",
                                     "sparsity", "lr", "time"]  # fmt: skip


def test_off_a_terminal_step_lines_show_loss_lr_and_throughput(tmp_path, capfd):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--log-every", "0"]) == 0
    lines = [line for line in capfd.readouterr().out.splitlines() if " step " in line]
    assert len(lines) == 72
    assert re.fullmatch(
        r"epoch 0 step 1/12: loss \S+  lr \S+  [\d,]+ samples/s  dense 0%", lines[0]
    )
    assert lines[-1].startswith("epoch 5 step 12/12") and lines[-1].endswith("sparse 80%")


def test_run_help_names_the_build_folder(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = one_line(capsys.readouterr().out)
    assert "RECIPE|BUILD_DIR" in help_text and "acdc compile -o" in help_text


def test_the_compile_table_is_whole_when_written_to_a_pipe(tmp_path):
    result = acdc("compile", "resnet50_imagenet_acdc90", "-o", tmp_path / "build")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "layer4.2.conv3.weight" in line]
    assert rows and "…" not in result.stdout
    cells = [cell.strip() for cell in rows[0].split("│")]
    assert cells[:4] == ["layer4.2.conv3.weight", "Conv2d", "2048x512x1x1", "0.9000"]
    assert float(cells[4]) > 100  # MFLOPs, the last column, whole


def test_the_report_draws_sparsity_as_steps_on_axes_that_end_at_the_data(tmp_path):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert main(["report", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    labels = re.findall(r">(\d+(?:\.\d+)?)%<", html)
    assert labels and max(float(v) for v in labels) <= 100
    charts = html.split("<svg ")[1:]
    sparsity = next(c for c in charts if "Sparsity of the prunable weights" in c)
    line = re.search(r'<polyline points="([^"]+)"', sparsity)[1].split()
    xs = [float(p.split(",")[0]) for p in line]
    assert any(a == b for a, b in zip(xs, xs[1:]))  # vertical segments: a step function
    layers = next(c for c in charts if "Final sparsity per layer" in c)
    assert "1 Linear 64-&gt;32" in layers and "3 Linear 32-&gt;10" in layers


def test_report_refuses_a_damaged_record_or_summary_by_name(tmp_path, capfd):
    run = tmp_path / "run"
    assert main(["run", str(TINY), "--out", str(run), "--device", "cpu"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    epoch = next(i for i, line in enumerate(lines) if '"EpochEnded"' in line)
    broken = json.loads(lines[epoch])
    del broken["top1"]
    lines[epoch] = json.dumps(broken)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    capfd.readouterr()
    assert main(["report", str(run)]) == 2
    err = one_line(capfd.readouterr().err)
    assert f"metrics.jsonl, line {epoch + 1}: the EpochEnded record lacks 'top1'" in err
    (run / "metrics.jsonl").write_text("\n".join(lines[:epoch] + lines[epoch + 1 :]) + "\n")
    summary = json.loads((run / "summary.json").read_text())
    summary["wall_seconds"] = "fast"
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run)]) == 2
    assert "not numbers: wall_seconds" in one_line(capfd.readouterr().err)
