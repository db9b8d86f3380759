"""The engine's state as a file beside a trainer's checkpoint: safetensors (no pickle) and a
sha256 digest, verified before it is read.

The masks are bool tensors (``masks.<i>``, ``previous_masks.<i>``); everything else of
`SparsityRuntime.state_dict()` (step, target, event history, recipe hash) is JSON in the
safetensors header.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors

from acdc_recipe import files
from acdc_recipe.formats.checkpoint import CheckpointError, save_safetensors, verified_bytes
from acdc_recipe.formats.run_dir import TrainerDir, digest_path
from acdc_recipe.runtime import SparsityRuntime

_MASK_LISTS = ("masks", "previous_masks")


def save_runtime_state(runtime: SparsityRuntime, folder: Path) -> Path:
    """Write the runtime's state into `folder` (atomically, then its digest); return the path."""
    state = runtime.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for key, value in state.items():
        if key in _MASK_LISTS:
            plain[key] = None if value is None else len(value)
            tensors.update({f"{key}.{i}": mask for i, mask in enumerate(value or ())})
        else:
            plain[key] = value
    path = TrainerDir.runtime_state(Path(folder))
    save_safetensors(path, tensors, {"runtime": json.dumps(plain, sort_keys=True)})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    files.write_text_atomic(digest_path(path), f"{digest}  {path.name}\n")
    return path


def load_runtime_state(runtime: SparsityRuntime, folder: Path) -> None:
    """Verify and restore the state `save_runtime_state` wrote into `folder`."""
    path = TrainerDir.runtime_state(Path(folder))
    if not path.is_file():
        raise CheckpointError(
            f"{folder} holds no {path.name}: it was not written by a run with the acdc callback "
            "(or the file was removed), so the sparsity schedule cannot continue from it"
        )
    data = verified_bytes(path)
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])["__metadata__"]
        plain = json.loads(json.loads(header["acdc_recipe"])["runtime"])
        tensors = load_tensors(data)
    except (ValueError, KeyError, TypeError, struct.error):
        raise CheckpointError(f"{path} is not an acdc runtime state file") from None
    state = dict(plain)
    for key in _MASK_LISTS:
        count = plain.get(key)
        state[key] = None if count is None else [tensors[f"{key}.{i}"] for i in range(count)]
    runtime.load_state_dict(state)
