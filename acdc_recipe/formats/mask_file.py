"""The masks of a sparse model, as a file beside it: bool tensors keyed by parameter name.

A run writes `masks.safetensors` next to `sparse.safetensors`, so a reader (the exporter,
`load_model`) knows which weights are pruned, and where, without rebuilding the recipe's
model or compiling the recipe. Each mask's pattern ("unstructured", "2:4", "block:1x4") is in
the safetensors metadata, with the recipe's name and hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from acdc_recipe.errors import UserError
from acdc_recipe.formats.checkpoint import save_safetensors
from acdc_recipe.runtime import SparsityRuntime


class MaskFileError(UserError, ValueError):
    """A masks file that cannot be read, or does not describe the weights beside it."""


@dataclass(frozen=True)
class Masks:
    """Masks (True: kept) and patterns, both keyed by parameter name."""

    masks: dict[str, Tensor]
    patterns: dict[str, str]

    @property
    def sparsity(self) -> float:
        """The fraction of the masked weights' entries that are pruned."""
        total = sum(mask.numel() for mask in self.masks.values())
        kept = sum(int(mask.count_nonzero()) for mask in self.masks.values())
        return 1 - kept / max(total, 1)


def runtime_masks(runtime: SparsityRuntime) -> Masks | None:
    """The masks in force in `runtime`, keyed by parameter name; None in a dense phase."""
    if runtime.masks is None:
        return None
    names = runtime.plan.names
    patterns = {param.name: param.pattern for param in runtime.plan.params}
    return Masks(dict(zip(names, runtime.masks, strict=True)), patterns)


def save_masks(path: Path, masks: Masks, recipe: str, recipe_hash: str) -> None:
    """Write `masks` atomically (bool tensors, CPU) with their patterns in the metadata."""
    tensors = {name: mask.detach().to("cpu", torch.bool) for name, mask in masks.masks.items()}
    patterns = json.dumps(masks.patterns, sort_keys=True)
    save_safetensors(
        path, tensors, {"recipe": recipe, "recipe_hash": recipe_hash, "patterns": patterns}
    )


def load_masks(path: Path) -> Masks:
    """Read a `save_masks` file; `MaskFileError` when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads(handle.metadata()["acdc_recipe"])
            patterns = json.loads(header["patterns"])
            masks = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as error:
        raise MaskFileError(
            f"{path} is not a masks file written by acdc-recipe ({type(error).__name__}); "
            "train the run again, or export one of its checkpoints"
        ) from None
    bad = [name for name, mask in masks.items() if mask.dtype != torch.bool]
    if bad or set(patterns) != set(masks):
        raise MaskFileError(
            f"{path} is damaged: its masks and their patterns do not match ({(bad or [''])[0]})"
        )
    return Masks(masks, patterns)
