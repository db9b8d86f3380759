"""The engine: executes a compiled recipe's plan during training, from the optimizer's hooks.

    runtime = acdc_recipe.runtime.attach(compiled, optimizer, steps_per_epoch=len(loader))

`SparsityRuntime` decides when; the functional forms do the work and are usable without it:
`select_masks`, `apply_masks_`, `zero_state_where_pruned_`, `reset_optimizer_state_`. See
docs/runtime.md. The `acdc run` application lives apart, in `acdc_recipe.trainer`.
"""

from acdc_recipe.runtime.events import (
    DenseSnapshot,
    EmptiedLayerWarning,
    LayersEmptied,
    MasksComputed,
    PhaseStarted,
    RuntimeEvent,
    event_from_dict,
    event_to_dict,
)
from acdc_recipe.runtime.mask_sync import MaskMismatchError
from acdc_recipe.runtime.masks import apply_masks_, select_masks
from acdc_recipe.runtime.optimizer_state import reset_optimizer_state_, zero_state_where_pruned_
from acdc_recipe.runtime.state import RuntimeStateError, SparsityRuntime, attach
from acdc_recipe.runtime.threshold import NonFiniteWeightError

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
    "SparsityRuntime",
    "apply_masks_",
    "attach",
    "event_from_dict",
    "event_to_dict",
    "reset_optimizer_state_",
    "select_masks",
    "zero_state_where_pruned_",
]
