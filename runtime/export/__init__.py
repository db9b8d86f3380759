"""Export a sparse model as files that are smaller, or faster, than the dense model.

    acdc_recipe.export("runs/quickstart")                           # compressed (sparse-bitmask)
    acdc_recipe.export("runs/quickstart", format="torch-sparse", batch_size=64, threads=1)
    acdc_recipe.export(model, "out/", runtime=runtime)               # from your own loop
    model = acdc_recipe.load_sparse("runs/quickstart/export-torch-sparse", build_model())

Formats (`FORMATS`, a plain dict): `compressed` (compressed-tensors' sparse-bitmask layout,
`compressed.py`) and `torch-sparse` (a runnable model on measured per-layer kernels,
`torch_sparse.py`). Every export folder holds model.safetensors and manifest.json (no
pickles); it is written under a temporary name and renamed when complete, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn

from acdc_recipe.files import write_folder_atomic
from acdc_recipe.runtime import SparsityRuntime
from acdc_recipe.runtime.export import compressed, torch_sparse
from acdc_recipe.runtime.export.source import (
    ExportError,
    SparseModel,
    check_masks_applied,
    first_problem,
    from_checkpoint,
    from_run_dir,
    from_runtime,
)
from acdc_recipe.schema import INPUT_DTYPES

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportFormat:
    """How one format is written (`write(source, folder, options)` returns manifest entries)."""

    write: Callable[[SparseModel, Path, dict[str, Any]], dict[str, Any]]
    description: str


FORMATS: dict[str, ExportFormat] = {
    "compressed": ExportFormat(
        lambda source, folder, options: compressed.write(source, folder),
        "compressed-tensors sparse-bitmask safetensors: smallest on disk",
    ),
    "torch-sparse": ExportFormat(
        lambda source, folder, options: torch_sparse.write(source, folder, **options),
        "a runnable model whose layers run on CSR kernels where that measured faster",
    ),
}


@dataclass(frozen=True)
class Exported:
    """Where an export went and what its manifest says."""

    path: Path
    manifest: dict[str, Any]


def _source(
    source: str | Path | nn.Module,
    runtime: SparsityRuntime | None,
    input_shape: Sequence[int] | None,
    input_dtype: str | None,
) -> SparseModel:
    shape = tuple(input_shape) if input_shape is not None else None
    if isinstance(source, nn.Module):
        if runtime is None:
            raise ExportError(
                "exporting a model needs the runtime that masked it: "
                "acdc_recipe.export(model, out, runtime=runtime)"
            )
        found = from_runtime(source, runtime, shape)
        return dataclasses.replace(found, input_dtype=input_dtype or "float")
    path = Path(source)
    if path.is_dir():
        found = from_run_dir(path)
    elif path.is_file():
        found = from_checkpoint(path)
    else:
        raise ExportError(
            f"{path} does not exist; give a run directory written by `acdc run` or one of its "
            "checkpoint-*.pt files"
        )
    if shape:
        found = dataclasses.replace(found, sample_shape=shape)
    return dataclasses.replace(found, input_dtype=input_dtype) if input_dtype else found


def _default_out(source: str | Path | nn.Module, format: str) -> Path:  # noqa: A002
    if isinstance(source, nn.Module):
        raise ExportError("exporting a model needs an output folder: export(model, out, ...)")
    path = Path(source)
    return (path if path.is_dir() else path.parent) / f"export-{format}"


def export(
    source: str | Path | nn.Module,
    out: str | Path | None = None,
    *,
    format: str = "compressed",  # noqa: A002 - the word users know
    runtime: SparsityRuntime | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Exported:
    """Export the sparse model of a run directory, a checkpoint, or a model and its runtime
    into the folder `out` (default: RUN_DIR/export-FORMAT), which must not exist yet.

    `batch_size`, `threads`, `input_shape` (one sample) and `input_dtype` ("float", or "int64"
    for token ids; default: the recipe's, else float) steer the torch-sparse timing; `device`
    "cuda" times it on the GPU, in `precision` "fp32", "fp16" or "bf16" (2:4 layers run on
    semi-structured kernels in fp16 or bf16 only).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if input_dtype not in (None, *INPUT_DTYPES):
        raise ExportError(
            f"unknown input_dtype {input_dtype!r}; choose one of {', '.join(INPUT_DTYPES)}"
        )
    if input_shape is not None and not all(
        isinstance(size, int) and size >= 1 for size in input_shape
    ):
        raise ExportError(
            f"input_shape must be one sample's sizes, each a whole number of at least 1; got "
            f"{list(input_shape)}"
        )
    if batch_size < 1 or (threads is not None and threads < 1):
        raise ExportError("batch_size and threads must be at least 1")
    if format == "torch-sparse":
        torch_sparse.check_device(device, precision)
    elif (device, precision) != ("cpu", "fp32"):
        raise ExportError(
            f"device and precision steer the torch-sparse format's timing; the {format} format "
            "stores the weights as they are"
        )
    target = Path(out) if out is not None else _default_out(source, format)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(
            f"{target} already exists; export into a new folder (-o DIR), or remove it first"
        )
    found = _source(source, runtime, input_shape, input_dtype)
    check_masks_applied(found)
    options = {
        "batch_size": batch_size,
        "threads": threads,
        "device": device,
        "precision": precision,
    }
    manifest: dict[str, Any] = {
        "format": format,
        "format_version": FORMAT_VERSION,
        "source": found.origin,
        "recipe": found.recipe,
        "sparsity": found.sparsity,
        "pruned": sorted(found.masks),
    }

    def write(folder: Path) -> None:
        manifest.update(FORMATS[format].write(found, folder, options))
        text = json.dumps(manifest, indent=2) + "\n"
        (folder / MANIFEST).write_text(text, encoding="utf-8")

    write_folder_atomic(target, write)  # the complete folder takes an empty one's place
    return Exported(target, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    """An export folder's manifest; `ExportError` when the folder is not an export."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ExportError(
            f"{folder} is not an export folder (no readable {MANIFEST}); give a folder written "
            "by `acdc export` or acdc_recipe.export"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        raise ExportError(f"{path} names no export format this version reads")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{path} has format_version {manifest.get('format_version')!r}; this version reads "
            f"{FORMAT_VERSION}"
        )
    return manifest


def load_sparse(path: str | Path, model: nn.Module) -> nn.Module:
    """Load an export into `model` (an instance of the exported architecture) and return it:
    for `torch-sparse`, with the CSR layers in place (eval mode); for `compressed`, the dense
    weights (kept values bit for bit, pruned positions +0.0)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    try:
        if manifest["format"] == "torch-sparse":
            return torch_sparse.load(folder, manifest, model)
        state = compressed.read_state_dict(folder, manifest)
    except (KeyError, ValueError, TypeError, IndexError, OSError, SafetensorError) as error:
        raise ExportError(
            f"the export in {folder} is damaged or incomplete: its files do not hold what its "
            f"manifest.json lists ({type(error).__name__}: {error}); export again"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = first_problem(error)
        raise ExportError(f"the export in {folder} does not fit this model: {first}") from None
    return model


__all__ = ["FORMATS", "ExportError", "Exported", "export", "load_sparse", "read_manifest"]
