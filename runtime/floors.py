"""Global selection with a floor per tensor: the guard against emptying a layer.

`floored_masks` prunes exactly `prune` entries of a group in the global order of their values
(ties: the earliest flat position first, as `prune_mask_unstructured`), where tensor `k`
keeps at least `floors[k]` entries: once a tensor has given up all it may, the order skips it
and the rest of the budget comes from the other tensors. `guarded_masks` applies it to a
`MaskGroup` with floors (`min_density`), LAMP scores (`scope: lamp`, every layer keeping at
least one weight) or channel floors (`min_per_channel`: the largest scores of every output
channel rank above all others, and the tensor's floor covers them, so they are never pruned).
A group without any never comes here: the paper's global magnitude selection stays exactly
`prune_mask_unstructured`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from acdc_recipe.compiler.plan import MaskGroup
from acdc_recipe.runtime.lamp import lamp_scores
from acdc_recipe.runtime.sharding import LAMP_NEEDS_WHOLE_LAYERS, Sharding, ShardingError
from acdc_recipe.runtime.threshold import unstructured_masks


def guarded_masks(
    tensors: Sequence[Tensor],
    group: MaskGroup,
    sharding: Sharding | None = None,
    input_axes: Sequence[int] | None = None,
) -> list[Tensor]:
    """Masks (each in its tensor's dtype) for an unstructured `group` with floors, LAMP scores
    or channel floors; `tensors` are the group's members (with `sharding`: their local shards,
    which hold whole output channels), `input_axes` their input axes (default 1)."""
    if group.score == "lamp":
        if sharding is not None:
            raise ShardingError(LAMP_NEEDS_WHOLE_LAYERS)
        ranked = [lamp_scores(t) for t in tensors]
    else:
        ranked = list(tensors)
    if group.channel_floors:
        axes = input_axes if input_axes is not None else [1] * len(tensors)
        ranked = [
            protect_channels(r, keep, axis)
            for r, keep, axis in zip(ranked, group.channel_floors, axes, strict=True)
        ]
    floors = group.floors or (0,) * len(tensors)
    masks = floored_masks(ranked, group.prune, floors, sharding)
    return [m.to(t.dtype) for m, t in zip(masks, tensors, strict=True)]


def floored_masks(
    values: Sequence[Tensor],
    prune: int,
    floors: Sequence[int],
    sharding: Sharding | None = None,
) -> list[Tensor]:
    """Masks with exactly `prune` zeros over `values` together, the smallest |value| first in
    flat order, tensor `k` keeping at least `floors[k]` entries.

    Rounds of exact selection: select over the tensors still free; each one that would lose
    more than it may gets exactly its allowance (its own smallest entries, the ones the global
    order reaches first) and leaves, taking its allowance off the budget; repeat until no free
    tensor exceeds its allowance. The threshold only rises from round to round, so a tensor
    that left would have reached its allowance anyway: the result is the global order with
    exhausted tensors skipped. At most one round per tensor. With `sharding` the values are
    local shards, every count is summed over the ranks, and all ranks take the same rounds.
    """
    if len(floors) != len(values):
        raise ValueError(f"{len(floors)} floors for {len(values)} tensors")
    sizes = (
        [sharding.numel(i) for i in range(len(values))] if sharding else [v.numel() for v in values]
    )
    allowance = [size - floor for size, floor in zip(sizes, floors, strict=True)]
    if min(allowance, default=0) < 0 or not 0 <= prune <= sum(allowance):
        raise ValueError(
            f"cannot prune {prune} of {sum(sizes)} entries keeping at least {list(floors)} of "
            f"tensors of {sizes} entries"
        )
    masks: list[Tensor | None] = [None] * len(values)
    free, budget = list(range(len(values))), prune
    while free:
        chosen, _ = unstructured_masks([values[i] for i in free], budget, _subset(sharding, free))
        pruned = _pruned_counts(chosen, [sizes[i] for i in free], sharding)
        over = [i for i, count in zip(free, pruned, strict=True) if count > allowance[i]]
        if not over:
            for i, mask in zip(free, chosen, strict=True):
                masks[i] = mask
            break
        for i in over:
            masks[i] = unstructured_masks([values[i]], allowance[i], _subset(sharding, [i]))[0][0]
            budget -= allowance[i]
        free = [i for i in free if i not in over]
    return masks  # type: ignore[return-value]


PROTECTED = torch.finfo(torch.float64).max  # above |v| of every finite float32/16 value


@torch.no_grad()
def protect_channels(values: Tensor, keep: int, input_axis: int = 1) -> Tensor:
    """|values| as float64 (exact for every narrower float), with the `keep` largest of every
    output channel raised to `PROTECTED`, above every other entry of any tensor.

    The output axis is 0, or 1 when the input axis is 0 (transformers' Conv1D); a 1-D tensor
    is one channel. Among equal magnitudes in a channel the earliest (in the channel's flat
    order) is kept, so the result is deterministic.
    """
    ranked = values.detach().abs().to(torch.float64)
    if keep <= 0 or not ranked.numel() or not bool(torch.isfinite(ranked).all()):
        return ranked  # NaN or inf stay visible to the selection, which refuses them
    output_axis = 1 if input_axis == 0 and ranked.dim() >= 2 else 0
    channels = ranked.movedim(output_axis, 0) if ranked.dim() >= 2 else ranked.reshape(1, -1)
    rows = channels.reshape(channels.shape[0], -1)
    if keep == 1:  # the first of the largest: no sort
        top = rows.argmax(dim=1, keepdim=True)
    else:
        top = rows.argsort(dim=1, descending=True, stable=True)[:, :keep]
    rows = rows.scatter(1, top, PROTECTED)
    protected = rows.reshape(channels.shape)
    if ranked.dim() < 2:
        return protected.reshape(ranked.shape)
    return protected.movedim(0, output_axis).contiguous()


def _subset(sharding: Sharding | None, indices: Sequence[int]) -> Sharding | None:
    return None if sharding is None else sharding.subset(indices)


def _pruned_counts(
    masks: Sequence[Tensor], sizes: Sequence[int], sharding: Sharding | None
) -> list[int]:
    """Zeros of each mask (of the full masks: summed over the ranks), one host read."""
    kept = torch.stack([torch.count_nonzero(m) for m in masks])
    if sharding is not None:
        sharding.sum_(kept)
    return [size - k for size, k in zip(sizes, kept.tolist(), strict=True)]
