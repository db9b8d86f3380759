"""`acdc schedule RECIPE`: the phase timeline as a table and a one-line band."""

from __future__ import annotations

import argparse

from rich.table import Table

from acdc_recipe.cli.common import add_recipe_arguments, console, load_from_args
from acdc_recipe.language.timeline import Timeline, lower

_STYLE = {"dense": "cyan", "sparse": "magenta", "gradual": "yellow"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schedule", help="show the phase timeline of a recipe")
    add_recipe_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    recipe = load_from_args(args)
    timeline = lower(recipe.schedule)
    default = recipe.sparsity.target if recipe.sparsity else 0.0
    console.print(render_table(timeline, default, recipe.name))
    console.print(band(timeline))
    console.print(timeline.compact())
    console.print(
        f"{timeline.sparse_units} of {timeline.length} {timeline.unit}s sparse "
        f"({timeline.sparse_units / timeline.length:.0%}); "
        f"{sum(p.kind != 'dense' for p in timeline.phases)} sparse phases"
    )
    for note in timeline.warnings():
        console.print(f"[yellow]warning[/] {note}")
    return 0


def render_table(timeline: Timeline, default_target: float, title: str) -> Table:
    unit = timeline.unit
    table = Table(title=f"{title}: schedule in {unit}s (inclusive ranges)")
    for column in ("#", "phase", f"{unit}s", "length", "sparsity", "masks"):
        table.add_column(column, justify="right" if column in ("#", "length") else "left")
    for index, phase in enumerate(timeline.phases):
        if phase.kind == "dense":
            sparsity, masks = "-", "-"
        elif phase.kind == "sparse":
            sparsity, masks = (
                f"{phase.sparsity_at(phase.start, default_target):g}",
                "chosen at start",
            )
        else:
            first = phase.sparsity_at(phase.start, default_target)
            last = phase.sparsity_at(phase.end - 1, default_target)
            sparsity, masks = f"{first:.3g} -> {last:.3g} {phase.curve}", f"every {phase.update}"
        style = _STYLE[phase.kind]
        table.add_row(
            str(index),
            f"[{style}]{phase.kind[0].upper()} {phase.kind}[/]",
            f"{phase.start}-{phase.end - 1}",
            str(phase.length),
            sparsity,
            masks,
        )
    return table


def band(timeline: Timeline, width: int = 100) -> str:
    """A one-line picture: D/S/G letters, one per unit (scaled down past `width`)."""
    scale = max(1, -(-timeline.length // width))
    cells = []
    for position in range(0, timeline.length, scale):
        kind = timeline.phase_at(position).kind
        cells.append(f"[{_STYLE[kind]}]{kind[0].upper()}[/]")
    return "".join(cells)
