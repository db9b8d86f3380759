"""Reading models back: an export (`load_sparse` into a model you built, or `load_model`, which
builds it), a run directory's dense or sparse model, or a trainer callback's saved model.

Every file of an export is checked against the sha256 its manifest recorded before a byte of
it is used, so an edited or truncated export is refused by name; then every tensor is loaded,
none missing, none left over (a tied tensor excepted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError
from torch import nn

from acdc_recipe.exporter import compressed, torch_sparse
from acdc_recipe.exporter.source import ExportError, config_builder, load_weights, recipe_builder
from acdc_recipe.exporter.trainer_sources import model_folder_weights
from acdc_recipe.files import sha256_of
from acdc_recipe.formats.checkpoint import load_safetensors
from acdc_recipe.formats.mask_file import MaskFileError
from acdc_recipe.formats.model_folder import read_config
from acdc_recipe.formats.run_dir import ExportDir, ModelFolder, RunDir, TrainerDir
from acdc_recipe.language.loading import load_recipe, load_recipe_text
from acdc_recipe.models import build_model
from acdc_recipe.models.transformers_models import model_from_config

FORMAT_VERSION = 2  # 1: tensors named <weight>.shape, ...; compressed-tensors does not read it
FORMAT_NAMES = (compressed.NAME, torch_sparse.NAME)
Which = Literal["dense", "sparse"]


def read_manifest(folder: Path) -> dict[str, Any]:
    """An export folder's manifest, after checking every file it lists against its sha256;
    `ExportError` when the folder is not an export of this version, or was changed."""
    files = ExportDir(Path(folder))
    try:
        manifest = json.loads(files.manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ExportError(
            f"{folder} is not an export folder (no readable {files.manifest.name}); give a "
            "folder written by `acdc export` or acdc_recipe.export"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMAT_NAMES:
        raise ExportError(f"{files.manifest} names no export format this version reads")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{files.manifest} has format_version {manifest.get('format_version')!r}; this "
            f"version reads {FORMAT_VERSION} (version 1 named its compressed tensors in a "
            "layout compressed-tensors does not read): export the run again"
        )
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or files.weights.name not in digests:
        raise ExportError(f"{files.manifest} lists no sha256 of the export's files")
    for name, expected in digests.items():
        path = files.path / Path(str(name)).name
        actual = sha256_of(path) if path.is_file() else "missing"
        if actual != expected:
            state = "is missing" if actual == "missing" else "was changed after the export"
            raise ExportError(
                f"the export in {folder} cannot be trusted: {path.name} {state} (its sha256 "
                f"does not match {files.manifest.name}); export again"
            )
    return manifest


def load_sparse(path: str | Path, model: nn.Module) -> nn.Module:
    """Load an export into `model` (an instance of the exported architecture) and return it:
    for `torch-sparse`, with the CSR layers in place (eval mode); for `compressed`, the dense
    weights (kept values bit for bit, pruned positions +0.0)."""
    folder = Path(path)
    return _load_into(model, folder, read_manifest(folder))


def _load_into(model: nn.Module, folder: Path, manifest: dict[str, Any]) -> nn.Module:
    """Load the export in `folder`, its manifest already verified, into `model`."""
    try:
        if manifest["format"] == torch_sparse.NAME:
            return torch_sparse.load(ExportDir(folder), manifest, model)
        state = compressed.read_state_dict(ExportDir(folder), manifest)
    except (KeyError, ValueError, TypeError, IndexError, OSError, SafetensorError) as error:
        raise ExportError(
            f"the export in {folder} is damaged or incomplete: its files do not hold what its "
            f"manifest.json lists ({type(error).__name__}: {error}); export again"
        ) from None
    return load_weights(model, state, f"the export in {folder}")


def load_model(path: str | Path, which: Which = "sparse") -> nn.Module:
    """The model of a run directory (`which`: its dense or sparse model), of an export (its
    sparse model, as that format runs), or of a trainer's output folder (its `dense/` or
    `sparse/` model): built from the recipe's train.model, or from config.json for a
    transformers model, with every tensor loaded. In eval mode."""
    folder = Path(path)
    if which not in ("dense", "sparse"):
        raise ExportError(f"which must be 'dense' or 'sparse', not {which!r}")
    if ExportDir(folder).manifest.is_file():
        if which != "sparse":
            raise ExportError(
                f"{folder} is an export: it holds the sparse model only; load the dense one "
                "from the run directory it was exported from"
            )
        manifest = read_manifest(folder)  # hashes every file once
        return _load_into(_export_model(folder, manifest), folder, manifest).eval()
    if RunDir(folder).recipe.is_file():
        return _run_model(RunDir(folder), which).eval()
    for candidate in (ModelFolder(folder), TrainerDir(folder).model(which)):
        if candidate.holds_weights():
            return _saved_model(candidate).eval()
    raise ExportError(
        f"{folder} holds no model to load: give a run directory written by `acdc run`, an "
        "export folder, or a trainer's output folder (or its dense/ or sparse/ folder) "
        "written with the acdc callback"
    )


def _export_model(folder: Path, manifest: dict[str, Any]) -> nn.Module:
    """A fresh model of the exported architecture: the transformers config's (config.json, or
    the manifest's for torch-sparse, whose files transformers cannot load), or the recipe's
    train.model."""
    files = ExportDir(folder)
    config = manifest.get("transformers_config") or (
        json.loads(files.config.read_text(encoding="utf-8")) if files.config.is_file() else {}
    )
    if "model_type" in config:
        try:
            return model_from_config(config)
        except ValueError as error:
            raise ExportError(f"the export in {folder}: {error}") from None
    recipe = load_recipe(files.recipe) if files.recipe.is_file() else None
    if recipe is not None and recipe.train is not None:
        return build_model(recipe.train.model)
    raise ExportError(
        f"the export in {folder} names no model to build (it was exported from a model in "
        "memory that is not a transformers model); build the model and load it with "
        "acdc_recipe.load_sparse(path, model)"
    )


def _run_model(run_dir: RunDir, which: Which) -> nn.Module:
    recipe = load_recipe(run_dir.recipe)
    weights = run_dir.model(which)
    if not weights.is_file():
        raise ExportError(
            f"{run_dir} has no {which} model ({weights.name}): the run has not finished"
            + (", or its schedule ends with a dense phase" if which == "sparse" else "")
        )
    build = recipe_builder(recipe, load_safetensors(weights), f"{weights}")
    if build is None:
        raise ExportError(f"{run_dir.recipe} has no train.model, so its model cannot be built")
    return build()


def _saved_model(folder: ModelFolder) -> nn.Module:
    """A model a trainer callback saved (transformers' layout or model.safetensors)."""
    origin = f"saved model {folder.path}"
    try:
        config, record = read_config(folder)
    except (ValueError, MaskFileError) as error:
        raise ExportError(f"{origin}: {error}") from None
    state = model_folder_weights(folder, origin)
    if "model_type" in config:
        return config_builder(config, state, origin)()
    recipe = None if record is None else load_recipe_text(record.recipe, f"{origin}: recipe")
    build = recipe_builder(recipe, state, origin)
    if build is None:
        raise ExportError(
            f"{origin} records no recipe with a train.model and no transformers config, so its "
            "model cannot be built; build it and load model.safetensors into it"
        )
    return build()
