"""Figures of the accuracy benchmark as standalone SVG files (no plotting library needed).

- `accuracy_<model>_<target>.svg`: validation top-1 after every epoch for dense, AC/DC, GMP
  and one-shot (seed 0) over the AC/DC phase bands (grey: sparse, white: dense).
- `mask_change_<model>.svg`: fraction of all prunable weights whose mask entry flipped at
  each AC/DC re-pruning, one line per target (and the MLP dense-block/learning-rate study).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 760, 330
LEFT, RIGHT, TOP, BOTTOM = 62, 190, 34, 44
COLORS = ("#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#57606a", "#e16f24")
Series = tuple[str, Sequence[tuple[float, float]]]


def _ticks(low: float, high: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = max((high - low) / count, min_step)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Series],
    bands: Sequence[tuple[float, float]] = (),
    percent: bool = True,
) -> str:
    """An SVG line chart with markers, a legend on the right and optional shaded x-bands."""
    xs = [x for _, points in series for x, _ in points] + [b for band in bands for b in band]
    ys = [y for _, points in series for _, y in points]
    x_ticks = _ticks(min(xs, default=0.0), max(xs, default=1.0), 9, min_step=1.0)
    pad = (max(ys, default=1.0) - min(ys, default=0.0)) * 0.05 or 0.01
    y_min = min(ys, default=0.0)
    y_ticks = _ticks(
        max(y_min - pad, 0.0) if y_min >= 0 else y_min - pad, max(ys, default=1.0) + pad
    )
    (x_lo, x_hi), (y_lo, y_hi) = (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1])
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * (right - LEFT)

    def sy(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - TOP)

    def fmt(y: float) -> str:
        return f"{100 * y:g}%" if percent else f"{y:g}"

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for start, end in bands:
        out.append(
            f'<rect x="{sx(start):.1f}" y="{TOP}" width="{sx(end) - sx(start):.1f}" '
            f'height="{bottom - TOP}" fill="#d0d7de" opacity="0.55"/>'
        )
    for y in y_ticks:
        out.append(
            f'<line x1="{LEFT}" x2="{right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eaeef2"/>'
            f'<text x="{LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{fmt(y)}</text>'
        )
    for x in x_ticks:
        out.append(f'<text x="{sx(x):.1f}" y="{bottom + 16}" text-anchor="middle">{x:g}</text>')
    out += [
        f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" '
        'fill="none" stroke="#57606a"/>',
        f'<text x="{(LEFT + right) / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(14 {(TOP + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    for index, (name, points) in enumerate(series):
        color = COLORS[index % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in points
        ]
        legend_y = TOP + 8 + 18 * index
        out.append(
            f'<line x1="{right + 12}" x2="{right + 32}" y1="{legend_y}" y2="{legend_y}" '
            f'stroke="{color}" stroke-width="3"/><text x="{right + 38}" y="{legend_y + 4}">'
            f"{escape(name)}</text>"
        )
    if bands:
        legend_y = TOP + 8 + 18 * len(series)
        out.append(
            f'<rect x="{right + 12}" y="{legend_y - 6}" width="20" height="12" fill="#d0d7de"/>'
            f'<text x="{right + 38}" y="{legend_y + 4}">AC/DC sparse phase</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


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
    ):
        run = _run(payload, arch, config)
        if run is not None:
            series.append((label, [(c["epoch"] + 1, c["top1"]) for c in run["curve"]]))
    spe = acdc["steps_per_epoch"]
    bands = [(p["start"] / spe, p["end"] / spe) for p in acdc["phases"] if p["kind"] != "dense"]
    title = f"{arch.upper()} on Fashion-MNIST: validation top-1 after each epoch (seed 0)"
    return line_chart(title, "epoch", "top-1", series, bands)


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
            series.append((run["config"].replace("acdc-", ""), points))
    if not series or (study and len(series) < 2):
        return None
    what = "dense-block length and learning rate" if study else "mask entries flipped"
    title = f"{arch.upper()}: {what} at each AC/DC re-pruning (seed 0)"
    x_label = "epoch of the re-pruning (compared with the previous sparse phase's mask)"
    return line_chart(title, x_label, "mask entries flipped", series)


def write_figures(payload: dict[str, Any], folder: Path) -> list[Path]:
    """Write every figure the payload has data for; returns the paths."""
    from acdc_recipe.files import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str | None] = {}
    for arch in sorted({r["arch"] for r in payload["runs"]}):
        figures[f"mask_change_{arch}.svg"] = mask_figure(payload, arch)
        figures[f"mask_change_{arch}_study.svg"] = mask_figure(payload, arch, study=True)
        for target in (0.9, 0.95):
            figures[f"accuracy_{arch}_{round(100 * target)}.svg"] = accuracy_figure(
                payload, arch, target
            )
    written = []
    for name, svg in figures.items():
        if svg is not None:
            write_text_atomic(folder / name, svg)
            written.append(folder / name)
    return written
