"""Check that every data-parallel rank chose the same masks, with one small all-reduce.

Masks are computed deterministically on each rank from weights that DDP keeps identical, so
they should agree; a silent disagreement (a rank with different weights, a non-deterministic
kernel) would make the replicas drift apart. Each rank reduces its masks to a short checksum
(kept count and position-weighted kept sum per mask); one all-reduce of [checksum, -checksum]
with MAX yields the maximum and minimum over ranks, which agree exactly when all ranks do.

Under FSDP2 each rank holds other shards of the masks, so nothing is identical; instead every
rank must have reached the same selection and the shards together must prune exactly the
plan's count: one sum of a small table (per rank, the kept count of every mask shard and the
threshold of every group) checks both (`verify_sharded_masks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from acdc_recipe.compiler.plan import MaskGroup
from acdc_recipe.runtime.sharding import Sharding
from acdc_recipe.runtime.threshold import magnitude_keys

_CHUNK = 1 << 22


class MaskMismatchError(RuntimeError):
    """Data-parallel ranks computed different masks."""


def tensor_checksum(tensors: Sequence[Tensor]) -> Tensor:
    """Per tensor: the sum of its values and the sum of values times flat position (float64).

    For a mask that is the kept count and the sum of kept positions.
    """
    values = []
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        weighted = torch.zeros((), dtype=torch.float64, device=flat.device)
        for start in range(0, flat.numel(), _CHUNK):
            chunk = flat[start : start + _CHUNK].double()
            positions = torch.arange(
                start, start + chunk.numel(), dtype=torch.float64, device=flat.device
            )
            weighted = weighted + (positions * chunk).sum()
        values += [flat.sum(dtype=torch.float64), weighted]
    return torch.stack(values) if values else torch.zeros(0, dtype=torch.float64)


def differing_across_ranks(checksum: Tensor) -> list[int]:
    """Indices of the tensors whose two checksum entries are not equal on every rank.

    One all-reduce of [checksum, -checksum] with MAX yields the maximum and minimum over ranks.
    """
    both = torch.cat([checksum, -checksum])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    highest, lowest = both[: len(checksum)], -both[len(checksum) :]
    return (highest != lowest).reshape(-1, 2).any(dim=1).nonzero().flatten().tolist()


def mask_checksum(masks: Sequence[Tensor]) -> Tensor:
    """Per mask: number of kept entries and the sum of their flat positions (float64)."""
    return tensor_checksum([mask != 0 for mask in masks])


def verify_masks_identical(masks: Sequence[Tensor], names: Sequence[str]) -> None:
    """Raise `MaskMismatchError` naming the first differing layer if ranks disagree.

    A no-op unless torch.distributed is initialized with more than one process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    checksum = mask_checksum(masks)
    if dist.get_backend() == "nccl":
        checksum = checksum.cuda()
    differs = differing_across_ranks(checksum)
    if differs:
        raise MaskMismatchError(
            f"data-parallel ranks computed different masks for {names[differs[0]]}"
            f"{f' and {len(differs) - 1} more layers' if len(differs) > 1 else ''}; the "
            "weights differ between ranks (was the model wrapped in DistributedDataParallel "
            "before training, with the same seed on every rank?)"
        )


def verify_sharded_masks(
    masks: Sequence[Tensor],
    names: Sequence[str],
    groups: Sequence[MaskGroup],
    thresholds: Sequence[Tensor | None],
    sharding: Sharding,
) -> None:
    """Raise `MaskMismatchError` naming a layer whose group the ranks selected differently
    (another threshold) or whose shards do not prune exactly `group.prune` entries together."""
    device = masks[0].device
    kept = [torch.count_nonzero(mask).reshape(1) for mask in masks]
    keys = [
        torch.full((1,), -1, device=device) if t is None else magnitude_keys(t.reshape(1))
        for t in thresholds
    ]
    row = torch.cat([value.to(device=device, dtype=torch.int64) for value in kept + keys])
    table = sharding.by_rank(row).cpu()
    kept_total, key_rows = table[:, : len(masks)].sum(dim=0).tolist(), table[:, len(masks) :]
    for g, group in enumerate(groups):
        size = sum(sharding.numel(i) for i in group.indices)
        pruned = size - sum(kept_total[i] for i in group.indices)
        if not bool((key_rows[:, g] == key_rows[0, g]).all()):
            why = "their thresholds differ"
        elif pruned != group.prune:
            why = (
                f"their shards prune {pruned} entries together where the plan prunes {group.prune}"
            )
        else:
            continue
        raise MaskMismatchError(
            f"the {sharding.world_size} ranks holding shards of {names[group.indices[0]]} did "
            f"not choose one mask: {why}; every rank must run the same recipe on the same model"
        )
