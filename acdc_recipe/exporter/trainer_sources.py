"""Sparse models as the trainer callbacks leave them, read for export.

- A transformers Trainer's checkpoint folder (`checkpoint-N/`): the model's safetensors, the
  engine's state beside them (masks, their parameter names, the recipe), verified by digest.
- A saved model folder (`<output_dir>/sparse`): the model, masks.safetensors and the record in
  config.json (`formats.model_folder`).
- A Lightning `.ckpt`: the LightningModule's state dict and the callback's state
  (`formats.runtime_files.callback_state`), read with ``torch.load(weights_only=True)``.

A transformers model is rebuilt from its config.json when a format needs it runnable; any
other from the recipe's train.model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from acdc_recipe.errors import first_line
from acdc_recipe.exporter.source import (
    ExportError,
    SparseModel,
    config_builder,
    from_recipe_files,
    masks_by_name,
)
from acdc_recipe.formats.checkpoint import CheckpointError
from acdc_recipe.formats.mask_file import load_masks
from acdc_recipe.formats.model_folder import read_config, read_json
from acdc_recipe.formats.run_dir import ModelFolder
from acdc_recipe.formats.runtime_files import read_runtime_state, saved_callback_state
from acdc_recipe.language.loading import load_recipe_text
from acdc_recipe.language.schema import Recipe


def from_model_folder(folder: ModelFolder) -> SparseModel:
    """A Trainer checkpoint folder, or a model folder the callbacks saved (see the module
    docstring)."""
    path = folder.path
    if folder.runtime_state.is_file():
        try:
            saved = read_runtime_state(path)
        except CheckpointError as error:
            raise ExportError(str(error)) from None
        origin = f"Trainer checkpoint {path} (step {saved.state.get('step')})"
        masks, patterns = masks_by_name(
            saved.state.get("names"), saved.state.get("patterns"), saved.state["masks"], origin
        )
        recipe_text = saved.recipe
    elif folder.masks.is_file():
        origin = f"saved model {path}"
        found = load_masks(folder.masks)
        masks, patterns = found.masks, found.patterns
        recipe_text = None
    else:
        raise ExportError(
            f"{path} holds a model but neither {folder.runtime_state.name} nor "
            f"{folder.masks.name}: it was not written with the acdc callback (or by an earlier "
            "version of it), so nothing says which weights are pruned; export the folder "
            "written at the end of the schedule (<output_dir>/sparse) or a checkpoint folder of "
            "a run with AcdcCallback"
        )
    try:
        config, record = read_config(folder)
    except ValueError as error:
        raise ExportError(f"{origin}: {error}") from None
    if record is not None:
        recipe_text = record.recipe
    recipe = _recipe(recipe_text, origin)
    state = model_folder_weights(folder, origin)
    found = from_recipe_files(state, masks, patterns, origin, recipe)
    if "model_type" not in config:
        return found
    build = config_builder(config, state, origin)
    return dataclasses.replace(found, build=build, transformers_config=config)


def from_lightning_checkpoint(path: Path) -> SparseModel:
    """A Lightning checkpoint written with the acdc callback."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any file torch cannot read safely: not ours
        raise ExportError(
            f"{path} cannot be read as a Lightning checkpoint with torch.load(weights_only=True) "
            f"({first_line(error)[:200]}); give a .ckpt written by Lightning with the acdc "
            "callback"
        ) from None
    callbacks = checkpoint.get("callbacks") if isinstance(checkpoint, dict) else None
    found = [saved_callback_state(state) for state in (callbacks or {}).values()]
    found = [item for item in found if item is not None]
    if not found or not isinstance(checkpoint.get("state_dict"), dict):
        raise ExportError(
            f"{path} holds no acdc callback state: it was not written by a Lightning Trainer "
            "with acdc_recipe.integrations.lightning.AcdcCallback among its callbacks (or by an "
            "earlier version of it), so nothing says which weights are pruned"
        )
    saved, module = found[0]
    origin = f"Lightning checkpoint {path} (step {saved.state.get('step')})"
    masks, patterns = masks_by_name(
        saved.state.get("names"), saved.state.get("patterns"), saved.state.get("masks"), origin
    )
    prefix = f"{module}." if module else ""
    state = {
        name[len(prefix) :]: tensor
        for name, tensor in checkpoint["state_dict"].items()
        if name.startswith(prefix) and isinstance(tensor, Tensor)
    }
    return from_recipe_files(state, masks, patterns, origin, _recipe(saved.recipe, origin))


def _recipe(text: str | None, origin: str) -> Recipe | None:
    return None if text is None else load_recipe_text(text, f"{origin}: recipe")


def model_folder_weights(folder: ModelFolder, origin: str) -> dict[str, Tensor]:
    """The model's tensors: model.safetensors, or every file its index names."""
    try:
        if folder.weights.is_file():
            return load_file(str(folder.weights))
        index: dict[str, Any] = read_json(folder.weights_index)
        files = sorted(set(index["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for name in files:
            state.update(load_file(str(folder.path / Path(name).name)))
        return state
    except (OSError, SafetensorError, KeyError, TypeError, ValueError, json.JSONDecodeError):
        raise ExportError(
            f"{origin}: its model's safetensors cannot be read (damaged, or not written by a "
            "trainer)"
        ) from None
