"""`acdc validate RECIPE`: load, template and check a recipe; print problems or a summary."""

from __future__ import annotations

import argparse

from acdc_recipe.cli.common import add_recipe_arguments, console, load_from_args
from acdc_recipe.loading import dump_recipe
from acdc_recipe.timeline import lower


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate", help="check a recipe and report every problem")
    add_recipe_arguments(parser)
    parser.add_argument("--resolved", action="store_true", help="print the resolved recipe")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    recipe = load_from_args(args)
    timeline = lower(recipe.schedule)
    if args.resolved:
        console.print(dump_recipe(recipe), markup=False, highlight=False, end="")
        return 0
    target = f"{recipe.sparsity.target:g} {recipe.sparsity.scope}" if recipe.sparsity else "dense"
    console.print(
        f"[green]ok[/] {recipe.name}: {len(timeline.phases)} phases over {timeline.length} "
        f"{timeline.unit}s, {timeline.sparse_units} sparse; sparsity {target}"
    )
    for note in timeline.warnings():
        console.print(f"[yellow]warning[/] {note}")
    return 0
