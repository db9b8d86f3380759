"""The `acdc` command: builds the parser; each verb lives in its own module.

A verb module defines `register(subparsers)`, which adds its parser and sets `handler`
(a function of the parsed arguments returning an exit code). Verb modules import torch only
inside their handlers, so `acdc --help`, `validate` and `schedule` answer without it.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys

from acdc_recipe.console import silence_stdout
from acdc_recipe.errors import UserError

VERBS = ("validate", "schedule", "compile", "run", "report", "convert", "export")


class _Version(argparse.Action):
    """`--version`: the installed distribution's version (and torch's, read without importing
    it)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        def installed(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "not installed"

        print(f"acdc-recipe {installed('acdc-recipe')} (torch {installed('torch')})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acdc",
        description="AC/DC sparsity recipes for PyTorch: validate, inspect, compile, run and convert.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the version of acdc-recipe and exit"
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"acdc_recipe.cli.{verb}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; user errors print as a paragraph and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `acdc schedule ... | head`: the reader has what it wanted
        silence_stdout()
        return 141


def command() -> None:
    """The `acdc` command: `main`, then exit. The objects a run created (torch's modules among
    them) are frozen first: the interpreter's last garbage collections would otherwise walk
    every one of them, which took over a second after every run (files are closed by then)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    command()
