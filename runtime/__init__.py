"""The runtime: the phase-state machine that executes a compiled recipe during training.

`compiled.attach(optimizer, steps_per_epoch=...)` returns a `SparsityRuntime`; see
docs/runtime.md, "Using the runtime in your own loop". Names are imported on first use, so
importing a submodule (e.g. `acdc_recipe.runtime.models`) does not load the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SparsityRuntime": "state",
    "RuntimeStateError": "state",
    "PhaseStarted": "events",
    "MasksComputed": "events",
    "DenseSnapshot": "events",
    "RuntimeEvent": "events",
    "event_to_dict": "events",
    "event_from_dict": "events",
    "MaskMismatchError": "mask_sync",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
