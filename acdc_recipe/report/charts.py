"""Self-contained SVG charts (no plotting library, no script): lines over phase bands, and bars.

Used by `acdc report` and by the benchmark figures. Axes end at the data (percent axes never
pass 0% or 100%); x ticks are whole numbers (the x axes are epochs); a series can be a step
function, drawn as one. Every chart has a viewBox, so the page can scale it to the width of a
narrow screen, and a bar chart is as tall as its slanted labels need. Percentages read as the
report's tables write them (`format_percent`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 62, 190, 34, 44
COLORS = ("#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#57606a", "#e16f24")
BAND_COLORS = {"sparse": "#fbe3f1", "gradual": "#fff4d6"}
BAND_LABELS = {"sparse": "sparse phase", "gradual": "gradual pruning"}
CHAR_WIDTH = 6.7  # the average advance of a 12 px sans-serif character, in px
LABEL_ANGLE = 40  # degrees the bar labels are slanted


@dataclass(frozen=True)
class Series:
    """One line; `steps` draws a step function (each value holds until the next point)."""

    name: str
    points: Sequence[tuple[float, float]]
    steps: bool = False


@dataclass(frozen=True)
class Band:
    """A shaded stretch of the x axis (dense stretches are left white)."""

    start: float
    end: float
    kind: str = "sparse"


def nice_ticks(
    low: float, high: float, count: int = 5, min_step: float = 0.0, integer: bool = False
) -> list[float]:
    """Round tick values inside [low, high] (both ends kept when nothing round falls there);
    with `integer`, only whole numbers (no 2.5 between 2 and 3)."""
    if high <= low:
        high = low + 1.0
    raw = max((high - low) / count, min_step, 1e-12)
    magnitude = 10 ** math.floor(math.log10(raw))
    steps = [m * magnitude for m in (1, 2, 2.5, 5, 10)]
    if integer:
        steps = [step for step in steps if step >= 1 and float(step).is_integer()]
    step = next(step for step in steps if step >= raw)
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    ticks = [round(i * step, 10) for i in range(first, last + 1)]
    return ticks or [low, high]


def format_percent(value: float | None) -> str:
    """A fraction as the report writes it everywhere: two decimals ('12.50%'), more only for a
    non-zero value that would read as 0.00% ('0.0012%')."""
    if value is None:
        return "\u2013"
    percent = 100 * value
    if percent != 0 and abs(percent) < 0.005:
        return f"{percent:.2g}%"
    return f"{percent:.2f}%"


def _format(value: float, percent: bool) -> str:
    return f"{100 * value:.4g}%" if percent else f"{value:.4g}"


def _y_range(values: Sequence[float], percent: bool) -> tuple[float, float]:
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.05 or (abs(high) * 0.05 or 0.05)
    low, high = low - pad, high + pad
    if percent:
        low, high = max(low, 0.0), min(high, 1.0)
    if values and min(values) >= 0:
        low = max(low, 0.0)
    return low, high


def standalone(svg: str) -> str:
    """A chart as an .svg file of its own (inline in HTML it needs no namespace)."""
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)


def _frame(title: str, height: int = HEIGHT) -> list[str]:
    return [
        f'<svg width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Series],
    bands: Sequence[Band] = (),
    percent: bool = False,
    x_max: float | None = None,
) -> str:
    """An SVG line chart with markers, a legend on the right and shaded phase bands."""
    points = [(x, y) for s in series for x, y in s.points if math.isfinite(y)]
    xs = [x for x, _ in points] + [edge for band in bands for edge in (band.start, band.end)]
    x_lo = min([0.0, *xs]) if xs else 0.0
    x_hi = x_max if x_max is not None else max(xs, default=1.0)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    y_lo, y_hi = _y_range([y for _, y in points], percent)
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * (right - LEFT)

    def sy(y: float) -> float:
        return bottom - (y - y_lo) / ((y_hi - y_lo) or 1.0) * (bottom - TOP)

    out = _frame(title)
    for band in bands:
        if band.kind in BAND_COLORS:
            out.append(
                f'<rect class="band-{band.kind}" x="{sx(band.start):.1f}" y="{TOP}" '
                f'width="{sx(band.end) - sx(band.start):.1f}" height="{bottom - TOP}" '
                f'fill="{BAND_COLORS[band.kind]}"/>'
            )
    for y in nice_ticks(y_lo, y_hi):
        out.append(
            f'<line x1="{LEFT}" x2="{right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eaeef2"/>'
            f'<text x="{LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_format(y, percent)}</text>'
        )
    for x in nice_ticks(x_lo, x_hi, 9, min_step=1.0, integer=True):
        out.append(f'<text x="{sx(x):.1f}" y="{bottom + 16}" text-anchor="middle">{x:g}</text>')
    out += [
        f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" '
        'fill="none" stroke="#57606a"/>',
        f'<text x="{(LEFT + right) / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(14 {(TOP + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    legend = 0
    for index, line in enumerate(series):
        color = COLORS[index % len(COLORS)]
        shown = [(x, y) for x, y in line.points if math.isfinite(y)]
        vertices = _step_vertices(shown, x_hi) if line.steps else shown
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in vertices)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in shown
        ]
        out.append(_legend_entry(legend, f'stroke="{color}" stroke-width="3"', line.name, "line"))
        legend += 1
    for kind in dict.fromkeys(band.kind for band in bands if band.kind in BAND_COLORS):
        out.append(_legend_entry(legend, f'fill="{BAND_COLORS[kind]}"', BAND_LABELS[kind], "box"))
        legend += 1
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _step_vertices(
    points: Sequence[tuple[float, float]], x_end: float
) -> list[tuple[float, float]]:
    """The corners of a step function through `points`, held to `x_end`."""
    vertices: list[tuple[float, float]] = []
    for (x, y), following in zip(points, [*points[1:], (x_end, None)], strict=True):
        vertices += [(x, y), (following[0], y)]
    return vertices


def _legend_entry(index: int, style: str, label: str, shape: str) -> str:
    x, y = WIDTH - RIGHT + 12, TOP + 8 + 18 * index
    mark = (
        f'<line x1="{x}" x2="{x + 20}" y1="{y}" y2="{y}" {style}/>'
        if shape == "line"
        else f'<rect x="{x}" y="{y - 6}" width="20" height="12" {style} stroke="#d0d7de"/>'
    )
    return f'{mark}<text x="{x + 26}" y="{y + 4}">{escape(label)}</text>'


def bar_chart(
    title: str, y_label: str, bars: Sequence[tuple[str, float]], percent: bool = True
) -> str:
    """Vertical bars from zero, one per label (labels slanted under the axis)."""
    values = [value for _, value in bars]
    _, y_hi = _y_range([0.0, *values], percent)
    longest = max([len(label) for label, _ in bars] + [1])
    right, bottom = WIDTH - 16, HEIGHT - BOTTOM
    slant = math.sin(math.radians(LABEL_ANGLE)) * CHAR_WIDTH * longest + 12
    height = bottom + 12 + math.ceil(min(slant, 180)) + 8  # the labels' depth, not more

    def sy(y: float) -> float:
        return bottom - y / (y_hi or 1.0) * (bottom - TOP)

    out = _frame(title, height)
    for y in nice_ticks(0.0, y_hi):
        out.append(
            f'<line x1="{LEFT}" x2="{right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eaeef2"/>'
            f'<text x="{LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_format(y, percent)}</text>'
        )
    out.append(
        f'<text transform="translate(14 {(TOP + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    slot = (right - LEFT) / max(len(bars), 1)
    for index, (label, value) in enumerate(bars):
        x, top = LEFT + index * slot, sy(value)
        centre = x + slot / 2
        shown = format_percent(value) if percent else f"{value:.4g}"
        out.append(
            f'<rect x="{x + slot * 0.15:.1f}" y="{top:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{bottom - top:.1f}" fill="#8250df"><title>{escape(label)}: '
            f"{shown}</title></rect>"
        )
        if len(bars) <= 24:
            out.append(
                f'<text x="{centre:.1f}" y="{top - 3:.1f}" text-anchor="middle">{shown}</text>'
            )
        out.append(
            f'<text transform="translate({centre + 3:.1f},{bottom + 12}) '
            f'rotate(-{LABEL_ANGLE})" text-anchor="end">{escape(label)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
