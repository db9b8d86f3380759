"""Figures of the regime benchmark (benchmarks/accuracy_regime.py) as standalone SVG files.

- `regime_<model>_<config>.svg`: after every epoch, validation top-1 (next-byte accuracy for
  the GPT-2) of dense, AC/DC, GMP, GMP with `scope: lamp` and one-shot (seed 0) at one target,
  over the AC/DC phase bands (shaded: sparse).
- `regime_mask_change_<model>.svg`: mask entries flipped at each AC/DC re-pruning, as a
  fraction of all prunable weights, one line per target (seed 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acdc_recipe.report.charts import Band, Series, line_chart, standalone
from benchmarks.accuracy_plots import write_svgs

LABELS = {"dense": "dense", "acdc": "AC/DC", "gmp": "GMP", "gmp-lamp": "GMP lamp"}
MODELS = {"mlp": "LeNet-300-100", "gpt2": "tiny GPT-2 (next byte)"}


def _seed0(payload: dict[str, Any], arch: str, config: str) -> dict[str, Any] | None:
    found = [r for r in payload["runs"] if r["arch"] == arch and r["config"] == config]
    return min(found, key=lambda r: r["seed"]) if found else None


def _suffix(config: str) -> str:
    """'acdc95' -> '95', 'acdc-2:4' -> '2:4'."""
    return config.removeprefix("acdc").removeprefix("-")


def curve_figure(payload: dict[str, Any], arch: str, acdc_config: str) -> str | None:
    """Top-1 per epoch of every method at the target of `acdc_config` (seed 0)."""
    acdc = _seed0(payload, arch, acdc_config)
    if acdc is None:
        return None
    suffix = _suffix(acdc_config)
    joiner = "-" if not suffix[0].isdigit() else ""
    series = []
    for method in ("dense", "acdc", "gmp", "gmp-lamp", "oneshot"):
        config = "dense" if method == "dense" else f"{method}{joiner}{suffix}"
        run = _seed0(payload, arch, config)
        if run is not None:
            label = LABELS.get(method, method) + ("" if method == "dense" else f" {suffix}")
            series.append(Series(label, [(c["epoch"] + 1, c["top1"]) for c in run["curve"]]))
    spe = acdc["steps_per_epoch"]
    bands = [Band(p["start"] / spe, p["end"] / spe, p["kind"]) for p in acdc["phases"]]
    model = MODELS.get(arch, f"CNN width {arch.removeprefix('cnn')}")
    title = f"{model}: validation top-1 after each epoch, {suffix} (seed 0)"
    return standalone(line_chart(title, "epoch", "top-1", series, bands, percent=True))


def mask_figure(payload: dict[str, Any], arch: str) -> str | None:
    """Mask entries flipped at each AC/DC re-pruning, one line per configuration (seed 0)."""
    series = []
    for run in payload["runs"]:
        if run["arch"] == arch and run["method"] == "acdc" and run["seed"] == 0:
            points = [(m["epoch"], m["changed"]) for m in run["remasks"][1:]]
            if points:
                series.append(Series(run["config"], points))
    if not series:
        return None
    title = f"{MODELS.get(arch, arch)}: mask entries flipped at each AC/DC re-pruning (seed 0)"
    x_label = "epoch of the re-pruning (compared with the previous sparse phase's mask)"
    return standalone(line_chart(title, x_label, "mask entries flipped", series, percent=True))


def write_figures(payload: dict[str, Any], folder: Path) -> list[Path]:
    """Write every figure the payload has data for; returns the paths."""
    figures: dict[str, str | None] = {}
    for arch in sorted({r["arch"] for r in payload["runs"]}):
        figures[f"regime_mask_change_{arch}.svg"] = mask_figure(payload, arch)
        acdc_configs = sorted({r["config"] for r in payload["runs"] if r["arch"] == arch})
        for config in (c for c in acdc_configs if c.startswith("acdc") and "-lamp" not in c):
            name = f"regime_{arch}_{_suffix(config).replace(':', 'of')}.svg"
            figures[name] = curve_figure(payload, arch, config)
    return write_svgs(figures, folder)
