"""The engine: executes a compiled recipe's plan during training, from the optimizer's hooks.

    runtime = acdc_recipe.runtime.attach(compiled, optimizer, steps_per_epoch=len(loader))

`SparsityRuntime` decides when; the functional forms do the work and are usable without it:
`select_masks`, `apply_masks_`, `zero_state_where_pruned_`, `reset_optimizer_state_`. See
docs/runtime.md. The `acdc run` application lives apart, in `acdc_recipe.trainer`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names this package hands out on first use, and the module that defines each: importing the
# package (or `acdc_recipe.runtime.events`, whose records `acdc report` reads) loads no torch.
_LAZY = {
    **dict.fromkeys(
        ("DenseSnapshot", "EmptiedLayerWarning", "LayersEmptied", "MasksComputed",
         "PhaseStarted", "RuntimeEvent", "ScheduleEndedWarning", "event_from_dict",
         "event_to_dict"),
        "acdc_recipe.runtime.events",
    ),
    "MaskMismatchError": "acdc_recipe.runtime.mask_sync",
    "apply_masks_": "acdc_recipe.runtime.masks",
    "select_masks": "acdc_recipe.runtime.masks",
    "reset_optimizer_state_": "acdc_recipe.runtime.optimizer_state",
    "zero_state_where_pruned_": "acdc_recipe.runtime.optimizer_state",
    "RuntimeStateError": "acdc_recipe.runtime.state",
    "SparsityRuntime": "acdc_recipe.runtime.state",
    "attach": "acdc_recipe.runtime.state",
    "NonFiniteWeightError": "acdc_recipe.runtime.threshold",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'acdc_recipe.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DenseSnapshot",
    "EmptiedLayerWarning",
    "LayersEmptied",
    "MaskMismatchError",
    "MasksComputed",
    "NonFiniteWeightError",
    "PhaseStarted",
    "RuntimeEvent",
    "RuntimeStateError",
    "ScheduleEndedWarning",
    "SparsityRuntime",
    "apply_masks_",
    "attach",
    "event_from_dict",
    "event_to_dict",
    "reset_optimizer_state_",
    "select_masks",
    "zero_state_where_pruned_",
]
