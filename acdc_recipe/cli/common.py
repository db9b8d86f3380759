"""Pieces every verb shares: the consoles, the recipe argument, `--set`, and loading."""

from __future__ import annotations

import argparse

from acdc_recipe.console import make_console
from acdc_recipe.language.loading import load_recipe, parse_set_args
from acdc_recipe.language.schema import Recipe

console = make_console()
errors = make_console(stderr=True)


def add_recipe_arguments(
    parser: argparse.ArgumentParser,
    metavar: str = "RECIPE",
    help: str = "a recipe file, or the name of a shipped recipe",  # noqa: A002
) -> None:
    parser.add_argument("recipe", metavar=metavar, help=help)
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
