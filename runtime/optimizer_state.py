"""Optimizer state at phase switches: zero it where weights are pruned, reset it when dense.

Covers the state torch's SGD, Adam and AdamW keep per parameter: `momentum_buffer` (SGD),
`exp_avg`, `exp_avg_sq` and `max_exp_avg_sq` (Adam family, amsgrad) and Adam's per-parameter
`step`. Other optimizers' per-element state tensors with the parameter's shape are treated the
same way; scalar state other than `step` is left alone.

Everything is in place (`zero_`, `_foreach_mul_`): no tensor is reallocated, so compiled or
capturable optimizer steps keep pointing at the same storage. State of FSDP2 parameters
(DTensors) is read and written as local shards, multiplied by local masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from acdc_recipe.language.schema import DECOMPRESS_POLICIES, DecompressPolicy
from acdc_recipe.runtime.sharding import local_tensor

MOMENT_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _elementwise_state(optimizer: torch.optim.Optimizer, param: Tensor) -> list[Tensor]:
    """The per-element state tensors (same shape as `param`) the optimizer keeps for it, as
    local tensors."""
    state = optimizer.state.get(param, {})
    return [
        local_tensor(value)
        for key, value in state.items()
        if key != "step" and isinstance(value, Tensor) and value.shape == param.shape
    ]


def _all_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


@torch.no_grad()
def zero_state_where_pruned_(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], masks: Sequence[Tensor]
) -> None:
    """Multiply each parameter's per-element state by its mask (0 = pruned), in place.

    Used when a sparse phase starts, so momentum cannot push a pruned weight off zero and a
    stale Adam moment does not survive under the mask. Parameters without state yet (the
    optimizer initializes state lazily, at its first step) are skipped.
    """
    states, factors = [], []
    for param, mask in zip(params, masks, strict=True):
        for value in _elementwise_state(optimizer, param):
            states.append(value)
            factors.append(mask if mask.dtype == value.dtype else mask.to(value.dtype))
    if states:
        torch._foreach_mul_(states, factors)


@torch.no_grad()
def reset_state_(optimizer: torch.optim.Optimizer) -> None:
    """Zero every parameter's moments and Adam's `step`: the state of a fresh optimizer.

    Adam's bias correction divides by 1 - beta**step; zeroed moments with an old, large `step`
    would make the first dense steps tiny (exp_avg_sq restarts near zero while its correction
    is ~1), so `step` restarts too and the dense phase begins exactly like a new Adam. For SGD
    a zero momentum buffer equals a fresh one when dampening is 0 (torch's default).
    """
    for param in _all_params(optimizer):
        for value in _elementwise_state(optimizer, param):
            value.zero_()
        step = optimizer.state.get(param, {}).get("step")
        if isinstance(step, Tensor):
            step.zero_()
        elif step is not None:
            optimizer.state[param]["step"] = type(step)(0)


def reset_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    policy: DecompressPolicy = "reset",  # type: ignore[valid-type]
    params: Sequence[Tensor] = (),
    previous_masks: Sequence[Tensor] | None = None,
) -> None:
    """Apply `optimizer_state.on_decompress` when a dense phase follows a sparse one.

    "reset" acts on every parameter the optimizer holds (as the reference resets all momentum
    buffers); "reset_reactivated" zeroes the state of the prunable `params` only at the
    positions `previous_masks` pruned (they train again from zero; Adam's `step` is per tensor
    and is kept); "keep" does nothing.
    """
    if policy not in DECOMPRESS_POLICIES:
        raise ValueError(
            f"optimizer_state.on_decompress must be one of {', '.join(DECOMPRESS_POLICIES)}, "
            f"got {policy!r}"
        )
    if policy == "reset":
        reset_state_(optimizer)
    elif policy == "reset_reactivated" and previous_masks is not None:
        zero_state_where_pruned_(optimizer, params, previous_masks)
