"""The engine's state as a trainer callback keeps it.

Beside a transformers Trainer checkpoint: a file, safetensors (no pickle) with a sha256 digest,
verified before it is read. The masks are bool tensors (``masks.<i>``, ``previous_masks.<i>``);
everything else of `SparsityRuntime.state_dict()` (step, target, event history, recipe hash,
the masks' parameter names) and the resolved recipe are JSON in the safetensors header.

In a Lightning checkpoint: the callback's state (`callback_state`), marked with
`CALLBACK_STATE`, so a reader finds it without the callback's class.

Either way an exporter reads the masks, their parameters and the recipe from the file alone.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors

from acdc_recipe import files
from acdc_recipe.formats.checkpoint import CheckpointError, save_safetensors, verified_bytes
from acdc_recipe.formats.run_dir import ModelFolder, digest_path
from acdc_recipe.runtime import SparsityRuntime

_MASK_LISTS = ("masks", "previous_masks")
CALLBACK_STATE = "acdc-recipe-callback-state"


@dataclass(frozen=True)
class SavedRuntime:
    """A runtime's `state_dict()` as saved, and the resolved recipe it ran (None when the
    writer did not record it)."""

    state: dict[str, Any]
    recipe: str | None


def save_runtime_state(runtime: SparsityRuntime, folder: Path, recipe: str | None = None) -> Path:
    """Write the runtime's state (and the resolved `recipe` text) into `folder` (atomically,
    then its digest); return the path."""
    state = runtime.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for key, value in state.items():
        if key in _MASK_LISTS:
            plain[key] = None if value is None else len(value)
            tensors.update({f"{key}.{i}": mask for i, mask in enumerate(value or ())})
        else:
            plain[key] = value
    path = ModelFolder(Path(folder)).runtime_state
    metadata = {"runtime": json.dumps(plain, sort_keys=True)}
    if recipe is not None:
        metadata["recipe"] = recipe
    save_safetensors(path, tensors, metadata)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    files.write_text_atomic(digest_path(path), f"{digest}  {path.name}\n")
    return path


def read_runtime_state(folder: Path) -> SavedRuntime:
    """Verify and read what `save_runtime_state` wrote into `folder`."""
    path = ModelFolder(Path(folder)).runtime_state
    if not path.is_file():
        raise CheckpointError(
            f"{folder} holds no {path.name}: it was not written by a run with the acdc callback "
            "(or the file was removed), so it has no sparsity state"
        )
    data = verified_bytes(path)
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(json.loads(data[8 : 8 + length])["__metadata__"]["acdc_recipe"])
        plain = json.loads(header["runtime"])
        tensors = load_tensors(data)
        state = dict(plain)
        for key in _MASK_LISTS:
            count = plain.get(key)
            state[key] = None if count is None else [tensors[f"{key}.{i}"] for i in range(count)]
    except (ValueError, KeyError, TypeError, struct.error):
        raise CheckpointError(f"{path} is not an acdc runtime state file") from None
    return SavedRuntime(state, header.get("recipe"))


def load_runtime_state(runtime: SparsityRuntime, folder: Path) -> None:
    """Verify and restore the state `save_runtime_state` wrote into `folder`."""
    runtime.load_state_dict(read_runtime_state(folder).state)


def callback_state(runtime: SparsityRuntime, recipe: str, module: str | None) -> dict[str, Any]:
    """A Lightning callback's state: the runtime's, the resolved recipe, and the submodule the
    recipe prunes (its parameters' prefix in the LightningModule's state dict)."""
    return {
        "format": CALLBACK_STATE,
        "runtime": runtime.state_dict(),
        "recipe": recipe,
        "module": module or "",
    }


def saved_callback_state(state: dict[str, Any]) -> tuple[SavedRuntime, str] | None:
    """(the runtime state and recipe, the module prefix) of a `callback_state`; None for any
    other state."""
    if not isinstance(state, dict) or state.get("format") != CALLBACK_STATE:
        return None
    return SavedRuntime(state["runtime"], state.get("recipe")), state.get("module") or ""
