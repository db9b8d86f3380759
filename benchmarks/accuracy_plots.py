"""Figures of the accuracy benchmark as standalone SVG files (no plotting library needed).

- `accuracy_<model>_<target>.svg`: validation top-1 after every epoch for dense, AC/DC, GMP
  and one-shot, and with `scope: lamp` where run (seed 0) over the AC/DC phase bands (grey:
  sparse, white: dense).
- `mask_change_<model>.svg`: fraction of all prunable weights whose mask entry flipped at
  each AC/DC re-pruning, one line per target (and the MLP dense-block/learning-rate study).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acdc_recipe.report.charts import Band, Series, line_chart, standalone


def _run(payload: dict[str, Any], arch: str, config: str) -> dict[str, Any] | None:
    found = [r for r in payload["runs"] if r["arch"] == arch and r["config"] == config]
    return min(found, key=lambda r: r["seed"]) if found else None


def accuracy_figure(payload: dict[str, Any], arch: str, target: float) -> str | None:
    percent = round(100 * target)
    acdc = _run(payload, arch, f"acdc-global{percent}")
    if acdc is None:
        return None
    series = []
    for label, config in (
        ("dense", "dense"),
        (f"AC/DC {percent}%", f"acdc-global{percent}"),
        (f"GMP {percent}%", f"gmp{percent}"),
        (f"one-shot {percent}%", f"oneshot{percent}"),
        (f"AC/DC lamp {percent}%", f"acdc-lamp{percent}"),
        (f"GMP lamp {percent}%", f"gmp-lamp{percent}"),
        (f"AC/DC lamp, min_per_channel 1, {percent}%", f"acdc-lamp{percent}-min_per_channel1"),
    ):
        run = _run(payload, arch, config)
        if run is not None:
            series.append(Series(label, [(c["epoch"] + 1, c["top1"]) for c in run["curve"]]))
    spe = acdc["steps_per_epoch"]
    bands = [Band(p["start"] / spe, p["end"] / spe, p["kind"]) for p in acdc["phases"]]
    title = f"{arch.upper()} on Fashion-MNIST: validation top-1 after each epoch (seed 0)"
    return standalone(line_chart(title, "epoch", "top-1", series, bands, percent=True))


def mask_figure(payload: dict[str, Any], arch: str, study: bool = False) -> str | None:
    """Targets and scopes (`study` False), or the 90% runs with other block lengths / lrs."""
    series = []
    for run in sorted(payload["runs"], key=lambda r: (r["scope"], r["target"] or 0, r["config"])):
        if run["arch"] != arch or run["method"] != "acdc" or run["seed"] != 0:
            continue
        is_study = run["config"].count("-") > 1
        if is_study != study and not (study and run["config"] == "acdc-global90"):
            continue
        points = [(m["epoch"], m["changed"]) for m in run["remasks"][1:]]
        if points:
            series.append(Series(run["config"].replace("acdc-", ""), points))
    if not series or (study and len(series) < 2):
        return None
    floored = any("min_" in line.name for line in series)
    what = "with floors" if floored else "dense-block length and learning rate"
    what = what if study else "mask entries flipped"
    title = f"{arch.upper()}: {what} at each AC/DC re-pruning (seed 0)"
    x_label = "epoch of the re-pruning (compared with the previous sparse phase's mask)"
    return standalone(line_chart(title, x_label, "mask entries flipped", series, percent=True))


def write_figures(payload: dict[str, Any], folder: Path) -> list[Path]:
    """Write every figure the payload has data for; returns the paths."""
    figures: dict[str, str | None] = {}
    for arch in sorted({r["arch"] for r in payload["runs"]}):
        figures[f"mask_change_{arch}.svg"] = mask_figure(payload, arch)
        figures[f"mask_change_{arch}_study.svg"] = mask_figure(payload, arch, study=True)
        for target in (0.9, 0.95):
            figures[f"accuracy_{arch}_{round(100 * target)}.svg"] = accuracy_figure(
                payload, arch, target
            )
    return write_svgs(figures, folder)


def write_svgs(figures: dict[str, str | None], folder: Path) -> list[Path]:
    """Write each figure that has data (not None) as `folder/name`; returns the paths."""
    from acdc_recipe.files import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, svg in figures.items():
        if svg is not None:
            write_text_atomic(folder / name, svg)
            written.append(folder / name)
    return written
