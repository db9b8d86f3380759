"""`acdc convert FILE`: a SparseML recipe or a reference-code config as an acdc recipe."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from acdc_recipe.cli.common import console, errors
from acdc_recipe.convert import SOURCE_FORMATS, Conversion, ConvertOptions, convert_recipe
from acdc_recipe.errors import UserError
from acdc_recipe.files import write_text_atomic
from acdc_recipe.language.schema import parse_pattern

MAX_DENSE_LAYERS = 1000  # layers kept dense for a pattern, one compile each


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
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="write a train section for this model; with an N:M or block pattern, also build "
        "it and keep dense the layers whose weight cannot hold the pattern",
    )
    parser.add_argument(
        "--sparseml-version",
        metavar="X.Y",
        default="latest",
        help="the SparseML release whose ACDCPruningModifier to follow: latest (0.12 onwards, "
        "the default) or 0.11",
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        metavar="N",
        help="batches per epoch of your training: converts masks SparseML updates inside an "
        "epoch (a fractional update_frequency) exactly, as a schedule in steps",
    )
    parser.add_argument(
        "--allow-dense",
        action="store_true",
        help="write a dense recipe when every pruning part of the source is left out",
    )
    parser.add_argument(
        "--allow-approximate-lr",
        action="store_true",
        help="convert a learning-rate schedule acdc cannot express as closely as it can (a "
        "constant at the source's peak) instead of refusing it",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing -o file (default: refuse)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else None
    if output is not None:
        _check_output(output, Path(args.file), args.overwrite)
    options = ConvertOptions(
        epochs=args.epochs,
        model=args.model,
        sparseml_version=args.sparseml_version,
        steps_per_epoch=args.steps_per_epoch,
        allow_dense=args.allow_dense,
        allow_approximate_lr=args.allow_approximate_lr,
    )
    conversion = convert_recipe(args.file, args.source_format, options)
    if args.model is not None:
        conversion = keep_untileable_layers_dense(
            conversion,
            lambda dense: convert_recipe(
                args.file, args.source_format, replace(options, keep_dense=dense)
            ),
        )
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


def keep_untileable_layers_dense(conversion: Conversion, convert_keeping) -> Conversion:
    """For an N:M or block pattern: compile the converted recipe against its model and convert
    again keeping dense each layer whose weight cannot hold the pattern (a 3-channel stem
    convolution, a depthwise one), until it compiles; each such layer is in the report.

    `convert_keeping(layers)` converts with `keep_dense=layers` (layer -> why). Other compile
    problems are left for `acdc compile`, which names them. Builds the model on the meta
    device (no weights), so this costs a trace per layer kept dense."""
    sparsity = conversion.recipe.sparsity
    if sparsity is None or parse_pattern(sparsity.pattern)[0] == "unstructured":
        return conversion
    from acdc_recipe.compiler import CompileError
    from acdc_recipe.models import compile_recipe_model

    kept: dict[str, str] = {}
    for _ in range(MAX_DENSE_LAYERS):
        try:
            compile_recipe_model(conversion.recipe)
        except CompileError as error:
            if error.path[-1:] != ("pattern",) or error.layer is None or error.layer in kept:
                return conversion
            kept[error.layer] = _why(str(error))
            conversion = convert_keeping(dict(kept))
            continue
        return conversion
    return conversion


def _why(message: str) -> str:
    """The reason in a pattern's CompileError, without its key and its advice."""
    reason = message.split("`: ", 1)[-1]
    return reason.split("; keep it dense", 1)[0]


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
