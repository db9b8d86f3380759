"""`MaskState`: the masks in force over a runtime's prunable parameters, and the two things that
change them: choosing new masks from the weights, and dropping them at a dense phase.

Masks are held in the weights' dtype, one flat list aligned with the prunable parameters (local
shards under FSDP2), so masking the gradients or the weights is one fused `_foreach_mul_`. The
last mask is kept as bool while dense only when a later mask computation will report how much
changed. `SparsityRuntime` decides when; this object does it and says what happened (events).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from acdc_recipe.compiler.plan import MaskUpdate, SparsityPlan
from acdc_recipe.errors import UserError
from acdc_recipe.runtime.events import LayersEmptied, MasksComputed
from acdc_recipe.runtime.mask_sync import verify_masks_identical, verify_sharded_masks
from acdc_recipe.runtime.masks import (
    apply_masks_,
    emptied_channels,
    mask_change_fraction,
    mask_sparsity,
    select_masks_and_thresholds,
)
from acdc_recipe.runtime.optimizer_state import reset_optimizer_state_, zero_state_where_pruned_
from acdc_recipe.runtime.sharding import Sharding, local_grads, local_tensors
from acdc_recipe.runtime.threshold import NonFiniteWeightError, check_finite


class RuntimeStateError(UserError, ValueError):
    """The runtime cannot run with this configuration or restore this state dict."""


def _pool_threshold(groups: Sequence[Any], thresholds: Sequence[Tensor | None]) -> float | None:
    """The largest pruned |w| when one unstructured group holds every pruned entry, else None."""
    if len(groups) != 1 or thresholds[0] is None:
        return None
    return float(thresholds[0])


class MaskState:
    """The masks of one runtime (see the module docstring)."""

    def __init__(
        self,
        plan: SparsityPlan,
        parameters: list[Tensor],
        sharding: Sharding | None,
        companions: tuple[list[Tensor], list[str]],
    ) -> None:
        self._parameters = parameters
        self._sharding = sharding
        self._names = plan.names
        self._input_axes = [param.input_axis for param in plan.params]
        self._companions = companions
        self.masks: list[Tensor] | None = None  # in the weights' dtype, during sparse phases
        self.view: tuple[Tensor, ...] | None = None  # `masks` as the tuple the runtime shows
        self.previous: list[Tensor] | None = None  # the last mask (bool), kept while dense
        self.target = 0.0
        self._masked_grad: tuple[Tensor, int] | None = None  # grads masked this step

    def local_weights(self) -> list[Tensor]:
        """The prunable weights as this rank's local shards (themselves when not sharded)."""
        return self._parameters if self._sharding is None else local_tensors(self._parameters)

    # -- every step of a sparse phase ------------------------------------------------------
    def mask_gradients(self) -> None:
        """Multiply the gradients by the masks, once per set of gradient tensors: the same
        tensors unchanged (object and version counter) are not masked twice."""
        if self.masks is None:
            return
        grads = local_grads(self._parameters)
        first = (
            grads[0] if grads[0] is not None else next((g for g in grads if g is not None), None)
        )
        marked = self._masked_grad
        if first is None or (
            marked is not None and marked[0] is first and marked[1] == first._version
        ):
            return
        if first is grads[0] and all(g is not None for g in grads):
            torch._foreach_mul_(grads, self.masks)
        else:
            pairs = [(g, m) for g, m in zip(grads, self.masks) if g is not None]
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
        self._masked_grad = (first, first._version)

    def mask_weights(self) -> None:
        """Multiply the weights by the masks (after an optimizer step); a new step's gradients
        will be masked again."""
        if self.masks is not None:
            with torch.no_grad():
                torch._foreach_mul_(self.local_weights(), self.masks)
        self._masked_grad = None

    # -- phase actions (rare) --------------------------------------------------------------
    def decompress(
        self, optimizer: torch.optim.Optimizer, policy: str, keep_for_change: bool
    ) -> None:
        """Drop the masks (a dense phase starts) and apply the optimizer-state `policy`; keep
        the last mask (as bool, 1 byte a weight) when `keep_for_change`, for the next mask
        computation's change statistics."""
        if self.masks is None:
            return
        needed = keep_for_change or policy == "reset_reactivated"
        previous = list(self.masks) if needed else None  # the same tensors, no copy
        self.masks, self.view, self.target = None, None, 0.0
        reset_optimizer_state_(optimizer, policy, self._parameters, previous)
        self.previous = [m.bool() for m in previous] if keep_for_change else None

    @torch.no_grad()
    def recompute(
        self, optimizer: torch.optim.Optimizer, step: int, index: int, update: MaskUpdate
    ) -> list[MasksComputed | LayersEmptied]:
        """Choose and apply new masks from the current weights; the events that say so."""
        weights = [param.detach() for param in self._parameters]
        groups, target = update.groups, update.target
        # Unstructured selections detect NaN/inf in their first histogram pass; check the rest.
        others = [
            i
            for g in groups
            if g.pattern != "unstructured"
            or g.prune in (0, sum(weights[j].numel() for j in g.indices))
            for i in g.indices
        ]
        companions, companion_names = self._companions
        check_finite(
            local_tensors([weights[i] for i in others] + companions),
            [self._names[i] for i in others] + companion_names,
            across=self._sharding,
        )
        start = time.perf_counter()
        try:
            masks, thresholds = select_masks_and_thresholds(weights, groups, self._input_axes)
        except NonFiniteWeightError:  # raises the same error, naming the layer
            check_finite(local_tensors(weights), self._names, across=self._sharding)
            raise
        threshold = _pool_threshold(groups, thresholds)
        seconds = time.perf_counter() - start
        if self._sharding is None:
            verify_masks_identical(masks, self._names)
        else:
            verify_sharded_masks(masks, self._names, groups, thresholds, self._sharding)
        previous = self.previous if self.masks is None else self.masks
        changed, per_layer_changed = None, None
        if previous is not None:
            changed, per_changed = mask_change_fraction(previous, masks, self._sharding)
            per_layer_changed = dict(zip(self._names, per_changed, strict=True))
        apply_masks_(weights, masks)
        zero_state_where_pruned_(optimizer, self._parameters, masks)
        self.masks, self.view, self.previous = masks, tuple(masks), None
        self.target = target
        achieved, per_layer = mask_sparsity(masks, self._sharding)
        channels = emptied_channels(masks, self._input_axes, self._sharding)
        events: list[MasksComputed | LayersEmptied] = [
            MasksComputed(
                step,
                index,
                target,
                achieved,
                dict(zip(self._names, per_layer, strict=True)),
                changed,
                per_layer_changed,
                threshold,
                seconds,
                {name: n for name, n in zip(self._names, channels, strict=True) if n},
            )
        ]
        emptied = tuple(name for name, value in zip(self._names, per_layer) if value >= 1.0)
        if emptied:
            events.append(LayersEmptied(step, index, emptied))
        return events

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks and the kept previous mask as bool CPU tensors (this rank's shards), target."""
        return {
            "target": self.target,
            "masks": None if self.masks is None else [(m != 0).cpu() for m in self.masks],
            "previous_masks": None
            if self.previous is None
            else [(m != 0).cpu() for m in self.previous],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks as saved (never recomputed): in the weights' dtype and device."""
        masks = self._restore(state["masks"], dtype=True)
        self.previous = self._restore(state["previous_masks"], dtype=False)
        self.target = float(state["target"])
        self.masks, self.view = masks, None if masks is None else tuple(masks)
        self._masked_grad = None

    def _restore(self, saved: Sequence[Tensor] | None, dtype: bool) -> list[Tensor] | None:
        if saved is None:
            return None
        if len(saved) != len(self._parameters):
            raise RuntimeStateError(
                f"the checkpoint holds {len(saved)} masks, the compiled model has "
                f"{len(self._parameters)} prunable parameters; was the model changed?"
            )
        restored = []
        local = local_tensors(self._parameters)
        for name, mask, param in zip(self._names, saved, local, strict=True):
            if tuple(mask.shape) != tuple(param.shape):
                raise RuntimeStateError(
                    f"the checkpoint's mask for {name} has shape {tuple(mask.shape)}, the "
                    f"parameter has shape {tuple(param.shape)}"
                )
            kind = param.dtype if dtype else torch.bool
            restored.append(mask.to(device=param.device, dtype=kind))
        return restored
