"""`acdc compile RECIPE`: build the recipe's model, compile the recipe, write and show the plan."""

from __future__ import annotations

import argparse
import json

from acdc_recipe.cli.common import add_recipe_arguments, console, load_from_args
from acdc_recipe.errors import UserError
from acdc_recipe.files import refuse_to_replace_recipe
from acdc_recipe.formats.run_dir import BuildDir


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
    from acdc_recipe.cli.plan_table import render_plan
    from acdc_recipe.compiler.emit import plan_json
    from acdc_recipe.formats.build import write_build
    from acdc_recipe.language.loading import dump_recipe
    from acdc_recipe.models import compile_recipe_model

    build = BuildDir.of(recipe.name, args.output)
    resolved = dump_recipe(recipe)
    refuse_to_replace_recipe(build.recipe, resolved, "-o", source=args.recipe)
    compiled = compile_recipe_model(recipe)
    try:
        written = write_build(compiled, build, resolved)
    except OSError as error:
        raise UserError(
            f"cannot write the build folder {build.path}: {error.strerror}; choose another -o DIR"
        ) from None
    plan = plan_json(compiled)
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    render_plan(plan, console)
    console.print(f"[green]wrote[/] {build.path}/{{{', '.join(p.name for p in written)}}}")
    return 0
