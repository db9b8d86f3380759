"""`acdc compile RECIPE`: build the recipe's model, compile the recipe, write and show the plan."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from acdc_recipe.cli.common import add_recipe_arguments, console, load_from_args
from acdc_recipe.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile", help="compile a recipe against its model and show the per-layer plan"
    )
    add_recipe_arguments(parser)
    parser.add_argument(
        "-o", "--output", metavar="DIR", help="build folder (default: builds/<recipe name>)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print plan.json to stdout instead of the report"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    recipe = load_from_args(args)
    if recipe.train is None:
        raise UserError(
            f"recipe {recipe.name!r} has no `train.model`, so `acdc compile` has no model to "
            "build; add train.model (name and input_shape), or call "
            "acdc_recipe.compiler.compile(model, recipe) from Python"
        )
    from acdc_recipe.compiler.emit import write_build
    from acdc_recipe.compiler.report import render_plan
    from acdc_recipe.loading import dump_recipe

    compiled = _compile_without_weights(recipe)
    folder = Path(args.output) if args.output else Path("builds") / _folder_name(recipe.name)
    write_build(compiled, folder, dump_recipe(recipe))
    plan = compiled.plan()
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    render_plan(plan, console)
    console.print(f"[green]wrote[/] {folder}/{{recipe.yaml, plan.json, module.py}}")
    return 0


def _compile_without_weights(recipe):
    """Compile against the model built on the meta device: the plan needs shapes, not weights.

    A model that only runs on real tensors (data-dependent control flow) is rebuilt on the CPU.
    """
    import torch

    from acdc_recipe.compiler import CompileError, build_model, compile

    try:
        with torch.device("meta"):
            model = build_model(recipe.train.model)
        return compile(model, recipe)
    except CompileError as error:
        if error.path != ("train", "model", "input_shape"):
            raise
    return compile(build_model(recipe.train.model), recipe)


def _folder_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "recipe"
