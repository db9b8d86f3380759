"""`acdc report RUN_DIR`: write a self-contained HTML report of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from acdc_recipe.cli.common import console
from acdc_recipe.errors import UserError
from acdc_recipe.formats.run_dir import RunDir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write an HTML report of a run directory")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `acdc run`")
    parser.add_argument("-o", "--output", metavar="FILE", help="default: RUN_DIR/report.html")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acdc_recipe.report.render import render_report

    try:
        path = render_report(args.run_dir, args.output)
    except OSError as error:
        raise UserError(
            f"cannot write the report to {args.output or RunDir(Path(args.run_dir)).report}: "
            f"{error.strerror}; choose another -o FILE"
        ) from None
    console.print(f"[green]wrote[/] {path}")
    return 0
