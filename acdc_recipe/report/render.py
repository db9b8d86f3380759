"""`acdc report RUN_DIR`: one self-contained HTML page from a run's metrics.jsonl and summary.json.

Charts are inline SVG (`charts.py`) placed by the jinja2 template (templates/report.html.j2):
accuracy and loss per epoch over the phase bands, the sparsity of the prunable weights as
measured (the mask's at each mask computation, the exact zeros left at the end of every epoch,
so a dense phase shows the zeros its weights still hold), per-layer sparsity, and the fraction
of the mask that changed at each re-pruning. No network access, no JavaScript; the page fits
narrow screens (the charts scale down).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from acdc_recipe.errors import UserError
from acdc_recipe.files import write_text_atomic
from acdc_recipe.formats.records import EpochEnded, Record, RunStarted, read_records
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.formats.summary import RunSummary
from acdc_recipe.report.charts import Band, Series, bar_chart, format_percent, line_chart
from acdc_recipe.runtime.events import KernelsChosen, MasksComputed, kernels_note


class ReportError(UserError, ValueError):
    """The folder is not a run directory, or its files were not written by `acdc run`."""


def layer_label(name: str, op: str, shape: list[int]) -> str:
    """'0 Linear 784->300', 'layer1.0.conv1 Conv2d 64->64 3x3', 'attn.in_proj_weight ...'."""
    base = name.removesuffix(".weight")
    if len(shape) < 2:
        return f"{base} {op}"
    kernel = f" {'x'.join(map(str, shape[2:]))}" if len(shape) > 2 else ""
    return f"{base} {op} {shape[1]}->{shape[0]}{kernel}"


def sparsity_points(records: list[Record], steps_per_epoch: int) -> list[tuple[float, float]]:
    """(epoch, sparsity of the prunable weights) as the run measured it: the achieved sparsity
    at each mask computation (a jump), and the exact zeros at the end of every epoch (in a dense
    phase, the zeros the weights still hold: 16-30% after a sparse phase, not 0%)."""
    points = [(0.0, 0.0)]
    for record in records:
        if isinstance(record, MasksComputed):
            points.append((record.step / steps_per_epoch, record.achieved_sparsity))
        elif isinstance(record, EpochEnded):
            points.append((record.epoch + 1.0, record.sparsity))
    return points


def report_context(run_dir: RunDir) -> dict[str, Any]:
    """Everything the template needs, read from the run directory."""
    metrics = run_dir.metrics
    if not metrics.is_file():
        raise ReportError(
            f"{run_dir} is not a run directory: it has no {metrics.name} (run `acdc run RECIPE "
            "--out DIR` first, then `acdc report DIR`)"
        )
    records = read_records(metrics)
    started = [r for r in records if isinstance(r, RunStarted)]
    start = started[-1] if started else None
    spe = start.steps_per_epoch if start else 1
    bands = [
        Band(p["start"] / spe, p["end"] / spe, p["kind"]) for p in (start.phases if start else [])
    ]
    epochs = [r for r in records if isinstance(r, EpochEnded)]
    x_max = max([b.end for b in bands] + [len(epochs), 1])
    masks = [r for r in records if isinstance(r, MasksComputed)]
    summary = _read_summary(run_dir.summary)
    per_layer = (summary or {}).get("per_layer_sparsity") or (
        masks[-1].per_layer_sparsity if masks else {}
    )
    labels = {
        layer["name"]: layer_label(layer["name"], layer["op"], layer["shape"])
        for layer in (start.layers if start else [])
    }
    axis = "epoch (the schedule's positions; epoch e ends at e + 1)"
    charts = [
        line_chart("Validation top-1 accuracy", axis, "top-1",
                   [Series("val top-1", [(r.epoch + 1, r.top1) for r in epochs])],
                   bands, percent=True, x_max=x_max),
        line_chart("Loss", axis, "cross-entropy",
                   [Series("train loss", [(r.epoch + 1, r.train_loss) for r in epochs]),
                    Series("val loss", [(r.epoch + 1, r.val_loss) for r in epochs])],
                   bands, x_max=x_max),
        line_chart("Sparsity of the prunable weights", axis, "sparsity",
                   [Series("sparsity", sparsity_points(records, spe))],
                   bands, percent=True, x_max=x_max),
    ]  # fmt: skip
    if per_layer:
        bars = [(labels.get(name, name), value) for name, value in per_layer.items()]
        charts.append(bar_chart("Final sparsity per layer", "sparsity", bars))
    changes = [
        (f"epoch {m.step / spe:g}", m.changed_fraction)
        for m in masks
        if m.changed_fraction is not None
    ]
    if changes:
        charts.append(bar_chart("Mask entries changed at each re-pruning", "changed", changes))
    return {
        "name": start.recipe if start else run_dir.path.name,
        "summary": summary,
        "charts": charts,
        "repruning": masks,
        "kernels": [
            (r.step / spe, kernels_note(r)) for r in records if isinstance(r, KernelsChosen)
        ],
        "steps_per_epoch": spe,
    }


def _read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json, or None before the run has finished."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        summary = None
    keys = summary if isinstance(summary, dict) else {}
    missing = [f.name for f in fields(RunSummary) if f.name not in keys]
    numbers = ("achieved_sparsity", "training_flops_multiplier", "inference_flops_multiplier",
               "wall_seconds", "epochs", "steps", "world_size")  # fmt: skip
    wrong = [key for key in numbers if key in keys and not _is_number(keys[key])]
    if missing or wrong:
        problem = (
            f"missing: {', '.join(missing[:4])}" if missing else f"not numbers: {', '.join(wrong)}"
        )
        raise ReportError(
            f"{path} is not a summary written by `acdc run` (it is truncated, edited or from "
            f"another tool; {problem}{', ...' if len(missing) > 4 else ''}); delete it to "
            "report the metrics alone"
        )
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the HTML report (default RUN_DIR/report.html) and return its path."""
    import jinja2

    run_dir = RunDir(Path(run_dir))
    context = report_context(run_dir)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("acdc_recipe.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["percent"] = format_percent  # the charts' labels read the same
    html = environment.get_template("report.html.j2").render(**context)
    path = Path(output) if output is not None else run_dir.report
    write_text_atomic(path, html)
    return path
