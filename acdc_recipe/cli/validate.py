"""`acdc validate RECIPE`: load, template and check a recipe; print problems or a summary."""

from __future__ import annotations

import argparse
import difflib

from acdc_recipe.cli.common import add_recipe_arguments, console, load_from_args
from acdc_recipe.language.loading import dump_recipe
from acdc_recipe.language.schema import BUILTIN_LAYER_KINDS, Recipe
from acdc_recipe.language.timeline import lower


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
    for note in timeline.warnings() + unknown_kind_notes(recipe):
        console.print(f"[yellow]warning[/] {note}")
    return 0


def unknown_kind_notes(recipe: Recipe) -> list[str]:
    """`sparsity.prunable` names that are no built-in layer kind: a typo, or a kind of the
    user's own that must be in acdc_recipe.compiler.LAYER_KINDS before compiling (checked then)."""
    named = recipe.sparsity.prunable if recipe.sparsity and recipe.sparsity.prunable else ()
    notes = []
    for name in named:
        if name not in BUILTIN_LAYER_KINDS:
            close = difflib.get_close_matches(name, BUILTIN_LAYER_KINDS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            notes.append(
                f"sparsity.prunable names {name!r}, which is no built-in layer kind{hint}; "
                "compiling refuses it unless it is registered in acdc_recipe.compiler.LAYER_KINDS"
            )
    return notes
