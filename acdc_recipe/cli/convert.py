"""`acdc convert FILE`: a SparseML recipe or a reference-code config as an acdc recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from acdc_recipe.cli.common import console, errors
from acdc_recipe.convert import SOURCE_FORMATS, convert_recipe
from acdc_recipe.errors import UserError
from acdc_recipe.files import write_text_atomic


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a SparseML recipe or a reference-code config to a recipe"
    )
    parser.add_argument(
        "file", metavar="FILE", help="a SparseML recipe (.yaml or .md) or a reference-code config"
    )
    parser.add_argument(
        "-o", "--output", metavar="RECIPE.yaml", help="write the recipe here (default: stdout)"
    )
    parser.add_argument(
        "--from",
        dest="source_format",
        choices=SOURCE_FORMATS,
        help="the source format (default: detected from the content)",
    )
    parser.add_argument(
        "--epochs", type=int, metavar="N", help="the run's length (reference configs need it)"
    )
    parser.add_argument("--model", metavar="NAME", help="write a train section for this model")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing -o file (default: refuse)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else None
    if output is not None:
        _check_output(output, Path(args.file), args.overwrite)
    conversion = convert_recipe(args.file, args.source_format, epochs=args.epochs, model=args.model)
    report = "\n".join(conversion.report.lines())
    if output is None:
        errors.print(report, markup=False, highlight=False)
        print(conversion.text, end="")
        return 0
    try:
        write_text_atomic(output, conversion.text)
    except OSError as error:
        raise UserError(
            f"cannot write {output}: {error.strerror}; choose another -o RECIPE.yaml"
        ) from None
    console.print(report, markup=False, highlight=False)
    console.print(f"[green]wrote[/] {output}; next: acdc schedule {output}", highlight=False)
    return 0


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse to write over the source, over a folder, or over a file without --overwrite."""
    if output.is_dir():
        raise UserError(f"-o {output} is a folder; give a file name, e.g. -o recipe.yaml")
    if output.exists() and source.exists() and output.samefile(source):
        raise UserError(f"-o {output} is the file being converted; choose another -o")
    if output.exists() and not overwrite:
        raise UserError(
            f"{output} exists; choose another -o RECIPE.yaml, or replace it with --overwrite"
        )
