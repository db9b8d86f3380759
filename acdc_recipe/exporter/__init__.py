"""Export a sparse model as files that are smaller, or faster, than the dense model.

    acdc_recipe.export("runs/quickstart")                            # compressed (sparse-bitmask)
    acdc_recipe.export("runs/quickstart", format=TorchSparse(batch_sizes=(1, 64), threads=1))
    acdc_recipe.export(model, "out/", runtime=runtime)                # from your own loop
    model = acdc_recipe.load_model("runs/quickstart/export-torch-sparse")
    model = acdc_recipe.load_sparse("runs/quickstart/export-torch-sparse", model)

Sources: a run directory or checkpoint of `acdc run`, a transformers Trainer's checkpoint
folder or the `sparse/` folder the callback saves, a Lightning `.ckpt` written with the
callback, or a model in memory with its runtime. Each format has one small config object
(`Compressed`, `TorchSparse`) holding its options, checked when it is made;
`format="torch-sparse"` means the config with its defaults. `FORMATS` maps each format's name
to its config class and its writer (a plain dict). Every export folder holds model.safetensors,
config.json and manifest.json (no pickles; the manifest keeps each file's sha256), and the
resolved recipe when the source has one; it is written under a temporary name and renamed when
complete, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from acdc_recipe.exporter import compressed, torch_sparse
from acdc_recipe.exporter.loading import FORMAT_VERSION, load_model, load_sparse, read_manifest
from acdc_recipe.exporter.source import (
    ExportError,
    SparseModel,
    check_masks_applied,
    from_checkpoint,
    from_run_dir,
    from_runtime,
)
from acdc_recipe.exporter.trainer_sources import (
    from_lightning_checkpoint,
    from_model_folder,
)
from acdc_recipe.files import sha256_of, write_folder_atomic
from acdc_recipe.formats.run_dir import (
    ExportDir,
    ExportSourceError,
    ModelFolder,
    RunDir,
    check_export_source,
    check_export_target,
    default_export_folder,
)
from acdc_recipe.language.loading import dump_recipe
from acdc_recipe.language.train_config import INPUT_DTYPES
from acdc_recipe.runtime import SparsityRuntime


@dataclass(frozen=True)
class Compressed:
    """compressed-tensors' sparse-bitmask layout in safetensors: smallest on disk."""

    name: ClassVar[str] = compressed.NAME


@dataclass(frozen=True)
class TorchSparse:
    """A runnable model whose layers run on CSR kernels where that measured faster.

    Each layer is timed at every one of `batch_sizes`, with `threads` torch threads, and
    dispatches each call on the batch it receives; `device` "cuda" times it on the GPU, in
    `precision` "fp32", "fp16" or "bf16" (2:4 layers run on semi-structured kernels in fp16 or
    bf16 only)."""

    name: ClassVar[str] = torch_sparse.NAME
    batch_sizes: tuple[int, ...] = torch_sparse.DEFAULT_BATCH_SIZES
    threads: int | None = None
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        sizes = tuple(self.batch_sizes)
        if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
            raise ExportError(
                f"batch_sizes must be one or more whole numbers of at least 1, got {sizes}"
            )
        object.__setattr__(self, "batch_sizes", tuple(sorted(set(sizes))))
        if self.threads is not None and self.threads < 1:
            raise ExportError(f"threads must be at least 1, got {self.threads}")
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
            source, folder, config.batch_sizes, config.threads, config.device, config.precision
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


def read_source(path: Path) -> SparseModel:
    """The sparse model a path holds: a run directory, a checkpoint file, a Trainer's
    checkpoint or model folder, or a Lightning checkpoint; `ExportError` for anything else."""
    try:
        check_export_source(path)
    except ExportSourceError as error:
        raise ExportError(str(error)) from None
    if path.is_file():
        return from_lightning_checkpoint(path) if path.suffix == ".ckpt" else from_checkpoint(path)
    run_dir = RunDir(path)
    return (
        from_run_dir(run_dir) if run_dir.recipe.is_file() else from_model_folder(ModelFolder(path))
    )


def _source(
    source: str | Path | nn.Module,
    runtime: SparsityRuntime | None,
    input_shape: tuple[int, ...] | None,
    input_dtype: str | None,
) -> SparseModel:
    if isinstance(source, nn.Module):
        if runtime is None:
            raise ExportError(
                "exporting a model needs the runtime that masked it: "
                "acdc_recipe.export(model, out, runtime=runtime)"
            )
        found = from_runtime(source, runtime, input_shape)
    else:
        found = read_source(Path(source))
        if input_shape:
            found = dataclasses.replace(found, sample_shape=input_shape)
    return dataclasses.replace(found, input_dtype=input_dtype) if input_dtype else found


def _default_out(source: str | Path | nn.Module, name: str) -> Path:
    if isinstance(source, nn.Module):
        raise ExportError("exporting a model needs an output folder: export(model, out, ...)")
    return default_export_folder(Path(source), name)


def _check_input(input_shape: Sequence[int] | None, input_dtype: str | None) -> None:
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


def export(
    source: str | Path | nn.Module,
    out: str | Path | None = None,
    format: str | ExportConfig = "compressed",  # noqa: A002 - the word users know
    *,
    runtime: SparsityRuntime | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
) -> Exported:
    """Export the sparse model of a run directory, a checkpoint, a trainer's folder or a model
    and its runtime into the folder `out` (default: RUN_DIR/export-FORMAT), which must not
    exist yet (or be empty).

    `format` is a format's name or its config (`Compressed()`, `TorchSparse(batch_sizes=...)`).
    `input_shape` (one sample) and `input_dtype` ("float", or "int64" for token ids) describe
    the input the torch-sparse format is timed on; by default the recipe's train.model, or for
    a model in memory the example inputs its recipe was compiled with.
    """
    config = format_config(format)
    _check_input(input_shape, input_dtype)
    target = Path(out) if out is not None else _default_out(source, config.name)
    try:
        check_export_target(target)
    except ExportSourceError as error:
        raise ExportError(str(error)) from None
    shape = tuple(input_shape) if input_shape is not None else None
    found = _source(source, runtime, shape, input_dtype)
    check_masks_applied(found)
    manifest: dict[str, Any] = {
        "format": config.name,
        "format_version": FORMAT_VERSION,
        "source": found.origin,
        "recipe": None if found.recipe is None else found.recipe.name,
        "sparsity": found.sparsity,
        "pruned": sorted(found.masks),
    }

    def write(folder: Path) -> None:
        files = ExportDir(folder)
        manifest.update(FORMATS[config.name].write(found, files, config))
        if found.recipe is not None:
            files.recipe.write_text(dump_recipe(found.recipe), encoding="utf-8")
        written = sorted(p for p in folder.iterdir() if p.is_file())
        manifest["sha256"] = {p.name: sha256_of(p) for p in written}
        text = json.dumps(manifest, indent=2) + "\n"
        files.manifest.write_text(text, encoding="utf-8")

    write_folder_atomic(target, write)  # the complete folder takes an empty one's place
    return Exported(target, manifest)


__all__ = [
    "FORMATS",
    "Compressed",
    "ExportConfig",
    "ExportError",
    "Exported",
    "TorchSparse",
    "export",
    "format_config",
    "load_model",
    "load_sparse",
    "read_manifest",
]
