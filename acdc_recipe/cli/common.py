"""Pieces every verb shares: the recipe argument, `--set`, and loading with friendly errors."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from acdc_recipe.errors import UserError
from acdc_recipe.loading import load_recipe, parse_set_args
from acdc_recipe.schema import Recipe

console = Console(soft_wrap=True)
errors = Console(stderr=True)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe file, or the name of a shipped recipe")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a variable (sparsity=0.95) or a key (train.seed=1); repeatable",
    )


def load_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe named on the command line, with its --set overrides applied."""
    return load_recipe(args.recipe, parse_set_args(args.overrides))


def refuse_to_replace_source(source: str, folder: Path, resolved: str, flag: str) -> None:
    """Refuse an output folder whose recipe.yaml is the recipe file being read, unless it
    already holds exactly the resolved recipe: writing it would destroy the original."""
    target = folder / "recipe.yaml"
    if not (target.is_file() and Path(source).is_file() and target.samefile(source)):
        return
    if target.read_text(encoding="utf-8") != resolved:
        raise UserError(
            f"{flag} {folder} would replace the recipe being read ({source}) with its resolved "
            f"form; choose another {flag}"
        )
