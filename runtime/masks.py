"""Magnitude masks for mask groups: unstructured (one exact threshold), N:M and block:RxC.

Every mask is in its weight's dtype and on its device (so the runtime can `_foreach_mul_` with
it), has exactly `group.prune` zeros per group, and breaks ties by position: among equal
scores, the earliest in flat order (group tensor order, then row-major) are pruned first.
N:M and block patterns read each tensor as ``[out, in, *kernel]``: its input axis (the plan's
`PrunableParam.input_axis`, 1 for Linear and Conv weights, 0 for transformers' Conv1D) is
moved to position 1 first, and the mask is moved back.

Weights may be FSDP2 DTensors (`acdc_recipe.runtime.sharding`): the masks are then this rank's
local shards of the masks one process would choose from the full weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from math import prod

import torch
from torch import Tensor

from acdc_recipe.compiler.plan import MaskGroup
from acdc_recipe.language.schema import parse_pattern
from acdc_recipe.runtime.floors import guarded_masks
from acdc_recipe.runtime.sharding import Sharding, check_pattern, local_tensors, sharding_of
from acdc_recipe.runtime.threshold import (
    NonFiniteWeightError,
    check_finite,
    prune_mask_unstructured,
    unstructured_masks,
)

__all__ = [
    "NonFiniteWeightError",
    "apply_masks_",
    "check_finite",
    "emptied_channels",
    "mask_change_fraction",
    "mask_sparsity",
    "prune_mask_block",
    "prune_mask_n_m",
    "select_masks",
    "select_masks_and_thresholds",
]


def select_masks(
    tensors: Sequence[Tensor],
    groups: Sequence[MaskGroup],
    input_axes: Sequence[int] | None = None,
) -> list[Tensor]:
    """One mask per tensor (aligned with `tensors`), each group pruned by its pattern.

    Usable without a runtime: `select_masks(weights, plan.updates[i][0].groups,
    [p.input_axis for p in plan.params])`; `input_axes` defaults to 1 for every tensor. For
    DTensor weights (every rank calls it) each mask is shaped like the weight's local shard.
    """
    return select_masks_and_thresholds(tensors, groups, input_axes)[0]


@torch.no_grad()
def apply_masks_(tensors: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """Multiply each tensor (a DTensor: its local shard) by its mask in place (one fused
    `_foreach_mul_`)."""
    torch._foreach_mul_(local_tensors(tensors), list(masks))


def select_masks_and_thresholds(
    tensors: Sequence[Tensor],
    groups: Sequence[MaskGroup],
    input_axes: Sequence[int] | None = None,
) -> tuple[list[Tensor], list[Tensor | None]]:
    """`select_masks`, plus per group the largest pruned |w| of an unstructured group (None
    for other patterns, groups with floors or LAMP scores, and groups that prune nothing)."""
    _check_partition(len(tensors), groups)
    axes = _axes(input_axes, len(tensors))
    sharding = sharding_of(tensors)
    tensors = local_tensors(tensors)
    masks: list[Tensor] = [torch.empty(0)] * len(tensors)
    thresholds: list[Tensor | None] = []
    for group in groups:
        threshold = None
        members = [tensors[i] for i in group.indices]
        member_axes = [axes[i] for i in group.indices]
        shards = None if sharding is None else sharding.subset(group.indices)
        for i in group.indices if sharding is not None else ():
            check_pattern(sharding, i, group.pattern, f"tensor {i}", axes[i])
        try:
            kind, a, b = parse_pattern(group.pattern)
            if kind == "n:m":
                group_masks = prune_mask_n_m(members, a, b, group.prune, member_axes, shards)
            elif kind == "block":
                group_masks = prune_mask_block(members, a, b, group.prune, member_axes, shards)
            elif group.score != "magnitude" or group.floors or group.channel_floors:
                group_masks = guarded_masks(members, group, shards, member_axes)
            else:
                group_masks, threshold = unstructured_masks(members, group.prune, shards)
        except NonFiniteWeightError:
            raise
        except ValueError as error:
            raise ValueError(
                f"mask group of tensors {list(group.indices)} (pattern {group.pattern!r}, "
                f"prune {group.prune}): {error}"
            ) from error
        for i, mask in zip(group.indices, group_masks, strict=True):
            masks[i] = mask
        thresholds.append(threshold)
    return masks, thresholds


def _check_partition(count: int, groups: Sequence[MaskGroup]) -> None:
    seen = [0] * count
    for group in groups:
        for i in group.indices:
            if not 0 <= i < count:
                raise ValueError(f"mask group refers to tensor {i}, but there are {count}")
            seen[i] += 1
    repeated = [i for i, n in enumerate(seen) if n > 1]
    if repeated:
        raise ValueError(f"tensors {repeated} appear in more than one mask group")
    missing = [i for i, n in enumerate(seen) if n == 0]
    if missing:
        raise ValueError(f"tensors {missing} belong to no mask group")


def _axes(input_axes: Sequence[int] | None, count: int) -> list[int]:
    """Each tensor's input axis: as given, or 1 (``[out, in, *kernel]``) for all."""
    return list(input_axes) if input_axes is not None else [1] * count


def _logical(tensor: Tensor, input_axis: int) -> Tensor:
    """`tensor` viewed as ``[out, in, *kernel]`` (its input axis moved to position 1)."""
    return tensor.movedim(input_axis, 1) if tensor.dim() >= 2 else tensor


def _logical_shape(shape: tuple[int, ...], input_axis: int) -> tuple[int, ...]:
    """The shape of `_logical` of a tensor of `shape`."""
    if len(shape) < 2:
        return shape
    dims = list(shape)
    dims.insert(1, dims.pop(input_axis))
    return tuple(dims)


def prune_mask_n_m(
    tensors: Sequence[Tensor],
    n: int,
    m: int,
    prune: int,
    input_axes: Sequence[int] | None = None,
    sharding: Sharding | None = None,
) -> list[Tensor]:
    """Keep the `n` largest |w| of every `m` consecutive weights along the input axis (dim 1
    unless `input_axes` says otherwise, per tensor).

    `prune` must be 0 (all kept) or exactly what the pattern removes. Among equal magnitudes in
    one run of `m`, the earlier input channels are pruned first. With `sharding` the tensors
    are local shards that hold whole runs (`check_pattern`), and `prune` counts all ranks.
    """
    axes = _axes(input_axes, len(tensors))
    shapes = [tuple(t.shape) for t in tensors] if sharding is None else sharding.shapes
    for shape, axis in zip(shapes, axes, strict=True):
        if len(shape) < 2 or shape[axis] % m:
            raise ValueError(
                f"a weight of shape {list(shape)} has no input-channel axis divisible by "
                f"{m}, so it cannot hold the {n}:{m} pattern"
            )
    implied = sum(prod(shape) // m * (m - n) for shape in shapes)
    if prune == 0:
        return [torch.ones_like(t) for t in tensors]
    if prune != implied:
        raise ValueError(f"{n}:{m} prunes exactly {implied} entries here, not {prune}")
    masks = []
    for tensor, axis in zip(tensors, axes, strict=True):
        channels_last = tensor.detach().movedim(axis, -1)
        runs = channels_last.abs().reshape(-1, m)
        order = runs.argsort(dim=1, stable=True)
        keep = torch.ones_like(runs, dtype=torch.bool)
        keep.scatter_(1, order[:, : m - n], False)
        mask = keep.view(channels_last.shape).movedim(-1, axis).contiguous()
        masks.append(mask.to(tensor.dtype))
    return masks


def prune_mask_block(
    tensors: Sequence[Tensor],
    rows: int,
    cols: int,
    prune: int,
    input_axes: Sequence[int] | None = None,
    sharding: Sharding | None = None,
) -> list[Tensor]:
    """Prune the `prune // (rows*cols)` whole blocks with the smallest L1 norm over the group.

    Each tensor is viewed as ``[out, in * prod(kernel)]`` (its input axis moved to position 1)
    and tiled by `rows` x `cols` blocks; blocks are ranked across the group's tensors with ties
    pruned in flat block order. With `sharding` the tensors are dim-0 shards of whole block
    rows of weights whose input axis is 1 (`check_pattern`).
    """
    size = rows * cols
    axes = _axes(input_axes, len(tensors))
    shapes = [tuple(t.shape) for t in tensors] if sharding is None else sharding.shapes
    grids = []
    for shape, axis in zip(shapes, axes, strict=True):
        out = _logical_shape(shape, axis)[0]
        inner = prod(shape) // out
        if out % rows or inner % cols:
            raise ValueError(
                f"a weight viewed as {out}x{inner} is not tiled by {rows}x{cols} blocks"
            )
        grids.append((out // rows, inner // cols))
    logical = [_logical(t.detach(), a) for t, a in zip(tensors, axes, strict=True)]
    scores = []
    for view in logical:
        out, inner = view.shape[0], prod(view.shape[1:])
        grid = view.reshape(out // rows, rows, inner // cols, cols)
        scores.append(grid.abs().sum(dim=(1, 3), dtype=torch.float64))
    blocks = sum(prod(grid) for grid in grids)
    if prune % size or not 0 <= prune <= blocks * size:
        raise ValueError(
            f"block:{rows}x{cols} prunes whole blocks of {size}: {prune} is not a multiple of "
            f"{size} in [0, {blocks * size}]"
        )
    # The block grids split like the rows: one row-major block per rank, in rank order.
    grid_sharding = None if sharding is None else replace(sharding, shapes=tuple(grids))
    block_masks = prune_mask_unstructured(scores, prune // size, grid_sharding)
    masks = []
    for tensor, view, axis, block_mask in zip(tensors, logical, axes, block_masks, strict=True):
        grid_rows, grid_cols = block_mask.shape
        expanded = block_mask.view(grid_rows, 1, grid_cols, 1).expand(-1, rows, -1, cols)
        mask = expanded.reshape(view.shape)
        if tensor.dim() >= 2:
            mask = mask.movedim(1, axis)
        masks.append(mask.contiguous().to(tensor.dtype))
    return masks


def mask_sparsity(
    masks: Sequence[Tensor], sharding: Sharding | None = None
) -> tuple[float, list[float]]:
    """Fraction of zero entries: over all masks together, and per mask (with `sharding`: of
    the full masks whose local shards these are)."""
    sizes = _sizes(masks, sharding)
    kept = _to_host([torch.count_nonzero(m) for m in masks], sharding)
    zeros = [s - k for s, k in zip(sizes, kept, strict=True)]
    per_tensor = [z / s if s else 0.0 for z, s in zip(zeros, sizes, strict=True)]
    total = sum(sizes)
    return (sum(zeros) / total if total else 0.0), per_tensor


def emptied_channels(
    masks: Sequence[Tensor], input_axes: Sequence[int], sharding: Sharding | None = None
) -> list[int]:
    """Output channels without any kept entry, per mask: rows, or columns when the input axis
    is 0 (transformers' Conv1D); a 1-D mask is one channel. With `sharding` the masks are
    dim-0 shards and the counts those of the full masks (one sum over the ranks)."""
    parts, by_rows = [], []
    for mask, axis in zip(masks, input_axes, strict=True):
        by_rows.append(mask.dim() >= 2 and axis != 0)
        view = _logical(mask, axis)
        kept = torch.count_nonzero(view.flatten(1) if view.dim() >= 2 else view.reshape(1, -1), 1)
        # Rows are whole on every rank (maybe none): count the empty ones here. A Conv1D's
        # columns (and the one channel of a 1-D mask): kept entries, summed over the ranks.
        parts.append((kept == 0).sum().reshape(1) if by_rows[-1] else kept)
    if not parts:
        return []
    counts = torch.cat([part.to(parts[0].device) for part in parts])
    if sharding is not None:
        sharding.sum_(counts)
    sizes = [part.numel() for part in parts]
    return [
        int(part[0]) if rows else int((part == 0).sum())
        for part, rows in zip(counts.cpu().split(sizes), by_rows, strict=True)
    ]


def mask_change_fraction(
    old_masks: Sequence[Tensor], new_masks: Sequence[Tensor], sharding: Sharding | None = None
) -> tuple[float, list[float]]:
    """Fraction of entries whose kept/pruned state differs between two lists of 0/1 masks
    (any dtype, bool included; with `sharding`, local shards of the full masks)."""
    if len(old_masks) != len(new_masks):
        raise ValueError(f"cannot compare {len(old_masks)} masks with {len(new_masks)}")
    flips = []
    for i, (old, new) in enumerate(zip(old_masks, new_masks, strict=True)):
        if old.shape != new.shape:
            raise ValueError(f"mask {i} changed shape from {list(old.shape)} to {list(new.shape)}")
        flips.append(torch.count_nonzero(torch.ne(new, old)))
    counts = _to_host(flips, sharding)
    sizes = _sizes(old_masks, sharding)
    per_tensor = [c / s if s else 0.0 for c, s in zip(counts, sizes, strict=True)]
    total = sum(sizes)
    return (sum(counts) / total if total else 0.0), per_tensor


def _sizes(masks: Sequence[Tensor], sharding: Sharding | None) -> list[int]:
    if sharding is None:
        return [m.numel() for m in masks]
    return [sharding.numel(i) for i in range(len(masks))]


def _to_host(counts: Sequence[Tensor], sharding: Sharding | None = None) -> list[int]:
    """0-dim count tensors as Python ints, read to the host in one transfer (summed over the
    ranks of `sharding` first)."""
    if not counts:
        return []
    stacked = torch.stack([c.to(counts[0].device) for c in counts])
    if sharding is not None:
        sharding.sum_(stacked)
    return stacked.tolist()
