"""`acdc export SOURCE`: write the sparse model of a run, a checkpoint or a trainer's folder as
smaller or faster files."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acdc_recipe.cli.common import console
from acdc_recipe.errors import UserError
from acdc_recipe.formats.run_dir import (
    check_export_source,
    check_export_target,
    default_export_folder,
)
from acdc_recipe.language.train_config import INPUT_DTYPES

FORMAT_CHOICES = ("compressed", "torch-sparse")  # acdc_recipe.exporter.FORMATS
TORCH_SPARSE_FLAGS = ("batch_sizes", "threads", "device", "precision")  # TorchSparse's fields


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _sizes(meaning: str, example: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: sizes of at least 1 separated by commas, for `meaning`."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(_positive(part) for part in text.split(","))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected {meaning} separated by commas ({example}), got {text!r}"
            ) from None

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a run's sparse model: compressed on disk, or faster to run"
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a run directory or one of its checkpoint-*.pt files; a transformers Trainer's "
        "checkpoint-N or sparse folder, or a Lightning .ckpt, written with the acdc callback",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="default: RUN_DIR/export-FORMAT (for a checkpoint or a trainer's folder, beside it)",
    )
    parser.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="compressed",
        help="compressed: compressed-tensors sparse-bitmask safetensors (smallest); "
        "torch-sparse: layers on CSR kernels where measured faster (default: compressed)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_sizes("batch sizes", "1,8,64,256"),
        metavar="N,N,...",
        help="torch-sparse: the batch sizes each layer is timed at; a call takes the kernel "
        "measured at the nearest (default 1,8,64,256)",
    )
    parser.add_argument(
        "--threads", type=_positive, metavar="N", help="torch-sparse: torch threads when timing"
    )
    parser.add_argument(
        "--input-shape",
        type=_sizes("one sample's shape as sizes", "1,28,28"),
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
    check_export_target(
        Path(args.output) if args.output else default_export_folder(source, args.format)
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
        f"{100 * manifest['sparsity']:.2f}% over "
        f"{_count(len(manifest['pruned']), 'pruned weight tensor')})"
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
        sizes = ",".join(str(size) for size in manifest["batch_sizes"])
        console.print(
            f"{kernels.count('csr')} of {len(layers)} pruned layers on CSR kernels"
            + (f", {semi} on 2:4 kernels" if semi else "")
            + f" (batches {sizes}, {_count(manifest['threads'], 'thread')}, "
            f"{manifest['device']}); outputs within {manifest['max_abs_diff']:.2g} of the dense model"
        )
        memory = manifest["memory"]
        console.print(
            f"pruned layers' weights: {memory['sparse_model_weights']:,} bytes held, "
            f"{memory['dense_weights']:,} dense; dense copies for the batch sizes where dense "
            f"is faster: {memory['dense_copies']:,} bytes of layers, "
            f"{memory['dense_blocks']:,} of {len(manifest['dense_blocks'])} blocks"
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
