"""`acdc report RUN_DIR`: one self-contained HTML page from a run's metrics.jsonl and summary.json.

Charts are inline SVG laid out here and drawn by the jinja2 template
(acdc_recipe/templates/report.html.j2): accuracy and loss per epoch over the phase bands,
per-layer sparsity, and the fraction of the mask that changed at each re-pruning. No network
access, no JavaScript.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from acdc_recipe.errors import UserError
from acdc_recipe.files import write_text_atomic
from acdc_recipe.runtime.run_summary import RunSummary
from acdc_recipe.runtime.sinks import read_records

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 36
COLORS = ("#1f6feb", "#d1242f", "#1a7f37", "#8250df")


class ReportError(UserError, ValueError):
    """The folder is not a run directory (no metrics.jsonl)."""


@dataclass
class Chart:
    """Geometry of one chart, ready for the template (all values in SVG pixels)."""

    title: str
    y_label: str
    bands: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    bars: list[dict[str, Any]] = field(default_factory=list)
    x_ticks: list[dict[str, Any]] = field(default_factory=list)
    y_ticks: list[dict[str, Any]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    return start + (value - low) / (high - low or 1.0) * (end - start)


def _fmt(value: float, percent: bool) -> str:
    return f"{100 * value:g}%" if percent else f"{value:g}"


def line_chart(
    title: str,
    y_label: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    x_max: float,
    phases: Sequence[dict[str, Any]],
    percent: bool = False,
) -> Chart:
    """Lines over epochs (x from 0 to `x_max`) on shaded phase bands."""
    values = [y for _, points in series for _, y in points if math.isfinite(y)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.08 or 0.05
    y_ticks = _nice_ticks(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
    y_low, y_high = y_ticks[0], y_ticks[-1]
    chart = Chart(title, y_label)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP

    def x(value: float) -> float:
        return round(_scale(value, 0.0, x_max, x0, x1), 1)

    def y(value: float) -> float:
        return round(_scale(value, y_low, y_high, y0, y1), 1)

    for phase in phases:
        chart.bands.append(
            {
                "x": x(phase["start"]),
                "w": x(phase["end"]) - x(phase["start"]),
                "kind": phase["kind"],
                "y": y1,
                "h": y0 - y1,
            }  # fmt: skip
        )
    for index, (name, points) in enumerate(series):
        path = " ".join(f"{x(px)},{y(py)}" for px, py in points if math.isfinite(py))
        dots = [{"x": x(px), "y": y(py)} for px, py in points if math.isfinite(py)]
        chart.series.append({"name": name, "points": path, "dots": dots, "color": COLORS[index]})
    chart.y_ticks = [{"y": y(t), "label": _fmt(t, percent)} for t in y_ticks]
    chart.x_ticks = [
        {"x": x(t), "label": f"{t:g}"} for t in _nice_ticks(0, x_max, 10) if t <= x_max
    ]
    return chart


def bar_chart(
    title: str, y_label: str, bars: Sequence[tuple[str, float]], percent: bool = True
) -> Chart:
    """Vertical bars, one per label, from zero."""
    high = max([value for _, value in bars] + [1e-9])
    y_ticks = _nice_ticks(0.0, min(1.0, high * 1.1) if percent else high * 1.1)
    longest = max([len(label) for label, _ in bars] + [1])
    height = HEIGHT + min(140, 5 * longest)
    chart = Chart(title, y_label, height=height)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    slot = (x1 - x0) / max(len(bars), 1)
    for index, (label, value) in enumerate(bars):
        top = _scale(value, 0.0, y_ticks[-1], y0, y1)
        chart.bars.append({
            "x": round(x0 + index * slot + slot * 0.15, 1), "w": round(slot * 0.7, 1),
            "y": round(top, 1), "h": round(y0 - top, 1), "label": label,
            "value": _fmt(round(value, 4), percent),
            "cx": round(x0 + (index + 0.5) * slot, 1),
        })  # fmt: skip
    chart.y_ticks = [
        {"y": round(_scale(t, 0.0, y_ticks[-1], y0, y1), 1), "label": _fmt(t, percent)}
        for t in y_ticks
    ]
    return chart


def report_context(run_dir: Path) -> dict[str, Any]:
    """Everything the template needs, read from the run directory."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(
            f"{run_dir} is not a run directory: it has no metrics.jsonl (run `acdc run RECIPE "
            "--out DIR` first, then `acdc report DIR`)"
        )
    records = read_records(metrics)
    started = [r for r in records if r["event"] == "run_started"]
    steps_per_epoch = started[-1]["steps_per_epoch"] if started else 1
    phases = [
        {
            "kind": p["kind"],
            "start": p["start"] / steps_per_epoch,
            "end": p["end"] / steps_per_epoch,
        }
        for p in (started[-1]["phases"] if started else [])
    ]
    epochs = [r for r in records if r["event"] == "epoch"]
    x_max = max([p["end"] for p in phases] + [len(epochs), 1])
    masks = [r for r in records if r["event"] == "MasksComputed"]
    summary = _read_summary(run_dir / "summary.json")
    per_layer = (summary or {}).get("per_layer_sparsity") or (
        masks[-1]["per_layer_sparsity"] if masks else {}
    )
    charts = [
        line_chart("Validation top-1 accuracy", "top-1",
                   [("val top-1", [(r["epoch"] + 1, r["top1"]) for r in epochs])],
                   x_max, phases, percent=True),
        line_chart("Loss", "cross-entropy",
                   [("train loss", [(r["epoch"] + 1, r["train_loss"]) for r in epochs]),
                    ("val loss", [(r["epoch"] + 1, r["val_loss"]) for r in epochs])],
                   x_max, phases),
        line_chart("Sparsity of the prunable weights", "sparsity",
                   [("sparsity", [(r["epoch"] + 1, r["sparsity"]) for r in epochs])],
                   x_max, phases, percent=True),
    ]  # fmt: skip
    if per_layer:
        charts.append(bar_chart("Final sparsity per layer", "sparsity", list(per_layer.items())))
    changes = [(f"epoch {m['step'] / steps_per_epoch:g}", m["changed_fraction"]) for m in masks]
    changes = [(label, value) for label, value in changes if value is not None]
    if changes:
        charts.append(bar_chart("Mask entries changed at each re-pruning", "changed", changes))
    return {
        "name": started[-1]["recipe"] if started else run_dir.name,
        "summary": summary,
        "charts": charts,
        "epochs": epochs,
        "repruning": [m for m in masks],
        "steps_per_epoch": steps_per_epoch,
    }


def _read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json, or None before the run has finished."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        summary = error
    keys = summary if isinstance(summary, dict) else {}
    missing = [f.name for f in fields(RunSummary) if f.name not in keys]
    if missing:
        raise ReportError(
            f"{path} is not a summary written by `acdc run` (it is truncated, edited or from "
            f"another tool; missing: {', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); delete it to report the metrics alone"
        )
    return summary


def render_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the HTML report (default RUN_DIR/report.html) and return its path."""
    import jinja2

    run_dir = Path(run_dir)
    context = report_context(run_dir)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("acdc_recipe", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = environment.get_template("report.html.j2").render(**context)
    path = Path(output) if output is not None else run_dir / "report.html"
    write_text_atomic(path, html)
    return path
