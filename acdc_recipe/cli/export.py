"""`acdc export RUN_DIR|CHECKPOINT`: write the sparse model as smaller or faster files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from acdc_recipe.cli.common import console
from acdc_recipe.errors import UserError
from acdc_recipe.formats.run_dir import RunDir, check_export_source
from acdc_recipe.language.train_config import INPUT_DTYPES

FORMAT_CHOICES = ("compressed", "torch-sparse")  # acdc_recipe.exporter.FORMATS
TORCH_SPARSE_FLAGS = ("batch_size", "threads", "device", "precision")  # TorchSparse's fields


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(_positive(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected one sample's shape as sizes separated by commas (1,28,28), got {text!r}"
        ) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a run's sparse model: compressed on disk, or faster to run"
    )
    parser.add_argument(
        "source", metavar="RUN_DIR|CHECKPOINT", help="a run directory or one of its checkpoints"
    )
    parser.add_argument("-o", "--output", metavar="DIR", help="default: RUN_DIR/export-FORMAT")
    parser.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="compressed",
        help="compressed: compressed-tensors sparse-bitmask safetensors (smallest); "
        "torch-sparse: layers on CSR kernels where measured faster (default: compressed)",
    )
    parser.add_argument(
        "--batch-size", type=_positive, metavar="N", help="torch-sparse: timing batch (default 1)"
    )
    parser.add_argument(
        "--threads", type=_positive, metavar="N", help="torch-sparse: torch threads when timing"
    )
    parser.add_argument(
        "--input-shape",
        type=_shape,
        metavar="C,H,W",
        help="torch-sparse: one sample's shape (default: the recipe's train.model.input_shape)",
    )
    parser.add_argument(
        "--input-dtype",
        choices=INPUT_DTYPES,
        help="torch-sparse: float samples, or int64 token ids (default: the recipe's "
        "train.model.input_dtype)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="torch-sparse: where to time (default cpu; cuda: 2:4 layers on semi-structured "
        "kernels)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        help="torch-sparse: the exported model's dtype (default fp32; fp16/bf16 with --device "
        "cuda)",
    )
    parser.set_defaults(handler=run)


def format_config(args: argparse.Namespace) -> Any:
    """The export format's config from the flags (checked by `check_before_loading`)."""
    from acdc_recipe.exporter import Compressed, TorchSparse

    given = torch_sparse_flags(args)
    return TorchSparse(**given) if args.format == TorchSparse.name else Compressed()


def torch_sparse_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The torch-sparse flags given; refused with another format (which stores the weights
    as they are)."""
    given = {name: getattr(args, name) for name in TORCH_SPARSE_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if args.format != "torch-sparse" and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(
            f"{flags} steer the torch-sparse format's timing; the {args.format} format stores "
            "the weights as they are (add --format torch-sparse, or leave them out)"
        )
    return given


def check_before_loading(args: argparse.Namespace) -> None:
    """The mistakes found from the arguments and file names alone, before torch loads: a flag
    of the other format, a source that does not exist or holds no sparse model, an output
    folder that exists."""
    torch_sparse_flags(args)
    source = Path(args.source)
    check_export_source(source)
    folder = source if source.is_dir() else source.parent
    target = Path(args.output) if args.output else RunDir(folder).export(args.format)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(
            f"{target} already exists; export into a new folder (-o DIR), or remove it first"
        )


def run(args: argparse.Namespace) -> int:
    check_before_loading(args)
    from acdc_recipe.exporter import export

    config = format_config(args)
    try:
        exported = export(
            args.source,
            args.output,
            config,
            input_shape=args.input_shape,
            input_dtype=args.input_dtype,
        )
    except OSError as error:
        raise UserError(
            f"cannot write the export: {error.strerror} ({error.filename}); choose another -o DIR"
        ) from None
    manifest = exported.manifest
    console.print(
        f"[green]wrote[/] {exported.path} ({manifest['format']}, sparsity "
        f"{100 * manifest['sparsity']:.2f}% over {_count(len(manifest['pruned']), 'pruned weight tensor')})"
    )
    if "pruned_bytes" in manifest:
        sizes = manifest["pruned_bytes"]
        console.print(
            f"pruned weights: {sizes['compressed']:,} bytes compressed, {sizes['dense']:,} dense "
            f"({sizes['compressed'] / max(sizes['dense'], 1):.3f}x)"
        )
    if "layers" in manifest:
        layers = manifest["layers"]
        kernels = [layer["kernel"] for layer in layers.values()]
        semi = kernels.count("semi_structured")
        console.print(
            f"{kernels.count('csr')} of {len(layers)} pruned layers on CSR kernels"
            + (f", {semi} on 2:4 kernels" if semi else "")
            + f" (batch {manifest['batch_size']}, {_count(manifest['threads'], 'thread')}, "
            f"{manifest['device']}); outputs within {manifest['max_abs_diff']:.2g} of the "
            "dense model"
        )
        uncovered = manifest["no_kernel"]
        if uncovered:
            kinds = ", ".join(sorted(set(uncovered.values())))
            one = len(uncovered) == 1
            console.print(
                f"{_count(len(uncovered), 'pruned layer')} {'has' if one else 'have'} no CSR "
                f"kernel ({kinds}) and {'stays' if one else 'stay'} dense"
            )
    return 0


def _count(number: int, noun: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
