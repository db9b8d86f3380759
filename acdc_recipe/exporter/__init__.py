"""Export a sparse model as files that are smaller, or faster, than the dense model.

    acdc_recipe.export("runs/quickstart")                            # compressed (sparse-bitmask)
    acdc_recipe.export("runs/quickstart", format=TorchSparse(batch_size=64, threads=1))
    acdc_recipe.export(model, "out/", runtime=runtime)                # from your own loop
    model = acdc_recipe.load_sparse("runs/quickstart/export-torch-sparse", model)

Each format has one small config object (`Compressed`, `TorchSparse`) holding its options,
checked when it is made; `format="torch-sparse"` means the config with its defaults.
`FORMATS` maps each format's name to its config class and its writer (a plain dict). Every
export folder holds model.safetensors and manifest.json (no pickles); it is written under a
temporary name and renamed when complete, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from safetensors import SafetensorError
from torch import nn

from acdc_recipe.exporter import compressed, torch_sparse
from acdc_recipe.exporter.source import (
    ExportError,
    SparseModel,
    check_masks_applied,
    first_problem,
    from_checkpoint,
    from_run_dir,
    from_runtime,
)
from acdc_recipe.files import write_folder_atomic
from acdc_recipe.formats.run_dir import ExportDir, RunDir
from acdc_recipe.language.train_config import INPUT_DTYPES
from acdc_recipe.runtime import SparsityRuntime

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Compressed:
    """compressed-tensors' sparse-bitmask layout in safetensors: smallest on disk."""

    name: ClassVar[str] = "compressed"


@dataclass(frozen=True)
class TorchSparse:
    """A runnable model whose layers run on CSR kernels where that measured faster.

    `batch_size` and `threads` are what each layer is timed with; `device` "cuda" times it on
    the GPU, in `precision` "fp32", "fp16" or "bf16" (2:4 layers run on semi-structured
    kernels in fp16 or bf16 only)."""

    name: ClassVar[str] = "torch-sparse"
    batch_size: int = 1
    threads: int | None = None
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or (self.threads is not None and self.threads < 1):
            raise ExportError("batch_size and threads must be at least 1")
        torch_sparse.check_device(self.device, self.precision)


ExportConfig = Compressed | TorchSparse


@dataclass(frozen=True)
class ExportFormat:
    """One format: its config class and how it is written (returns manifest entries)."""

    config: type[Any]
    write: Callable[[SparseModel, ExportDir, Any], dict[str, Any]]


FORMATS: dict[str, ExportFormat] = {
    Compressed.name: ExportFormat(
        Compressed, lambda source, folder, config: compressed.write(source, folder)
    ),
    TorchSparse.name: ExportFormat(
        TorchSparse,
        lambda source, folder, config: torch_sparse.write(
            source, folder, config.batch_size, config.threads, config.device, config.precision
        ),
    ),
}


@dataclass(frozen=True)
class Exported:
    """Where an export went and what its manifest says."""

    path: Path
    manifest: dict[str, Any]


def format_config(format: str | ExportConfig) -> ExportConfig:  # noqa: A002
    """The config object for a format given by name (its defaults) or as a config."""
    if isinstance(format, str):
        if format not in FORMATS:
            raise ExportError(
                f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}"
            )
        return FORMATS[format].config()
    if not isinstance(format, tuple(f.config for f in FORMATS.values())):
        raise ExportError(
            f"format must be a format name ({', '.join(FORMATS)}) or its config (Compressed(), "
            f"TorchSparse(...)), not a {type(format).__name__}"
        )
    return format


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
        found = from_run_dir(RunDir(path))
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


def _default_out(source: str | Path | nn.Module, name: str) -> Path:
    if isinstance(source, nn.Module):
        raise ExportError("exporting a model needs an output folder: export(model, out, ...)")
    path = Path(source)
    return RunDir(path if path.is_dir() else path.parent).export(name)


def export(
    source: str | Path | nn.Module,
    out: str | Path | None = None,
    format: str | ExportConfig = "compressed",  # noqa: A002 - the word users know
    *,
    runtime: SparsityRuntime | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
) -> Exported:
    """Export the sparse model of a run directory, a checkpoint, or a model and its runtime
    into the folder `out` (default: RUN_DIR/export-FORMAT), which must not exist yet.

    `format` is a format's name or its config (`Compressed()`, `TorchSparse(batch_size=64)`).
    `input_shape` (one sample) and `input_dtype` ("float", or "int64" for token ids; default:
    the recipe's, else float) describe the input the torch-sparse format is timed on.
    """
    config = format_config(format)
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
    target = Path(out) if out is not None else _default_out(source, config.name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(
            f"{target} already exists; export into a new folder (-o DIR), or remove it first"
        )
    found = _source(source, runtime, input_shape, input_dtype)
    check_masks_applied(found)
    manifest: dict[str, Any] = {
        "format": config.name,
        "format_version": FORMAT_VERSION,
        "source": found.origin,
        "recipe": found.recipe,
        "sparsity": found.sparsity,
        "pruned": sorted(found.masks),
    }

    def write(folder: Path) -> None:
        files = ExportDir(folder)
        manifest.update(FORMATS[config.name].write(found, files, config))
        text = json.dumps(manifest, indent=2) + "\n"
        files.manifest.write_text(text, encoding="utf-8")

    write_folder_atomic(target, write)  # the complete folder takes an empty one's place
    return Exported(target, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    """An export folder's manifest; `ExportError` when the folder is not an export."""
    path = ExportDir(folder).manifest
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ExportError(
            f"{folder} is not an export folder (no readable {path.name}); give a folder written "
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
        if manifest["format"] == TorchSparse.name:
            return torch_sparse.load(ExportDir(folder), manifest, model)
        state = compressed.read_state_dict(ExportDir(folder), manifest)
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


__all__ = [
    "FORMATS",
    "Compressed",
    "ExportConfig",
    "ExportError",
    "Exported",
    "TorchSparse",
    "export",
    "format_config",
    "load_sparse",
    "read_manifest",
]
