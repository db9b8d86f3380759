"""FSDP2 for `acdc run` (`train.distributed: fsdp`): shard the model, snapshot and gather it.

`shard_model` gives `fully_shard` to every module that holds parameters of its own (with what
lies below it), outermost first, then to the root: each such module's parameters, gradients
and optimizer state are split over the ranks on dim 0 and gathered only for its forward and
backward. A module sharing a parameter with another part of the model is left to the root.
While training, each rank keeps only its shards; the dense and sparse models are gathered
once each, on rank 0, to be written (`gather_on_rank0`).

torch's FSDP2 and distributed-checkpoint modules are imported by the functions that use them:
they take a second to import, which a run of one process does not need to pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from acdc_recipe.runtime.sharding import is_sharded, local_tensor, sharded_like


def shard_model(model: nn.Module) -> None:
    """Apply `fully_shard` to `model`'s parameter-holding modules and to `model` itself."""
    from torch.distributed.fsdp import fully_shard

    owners: dict[int, set[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), set()).add(name)

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            inside = {name} | {f"{name}.{n}" for n, _ in child.named_modules() if n}
            shared = any(not owners[id(p)] <= inside for p in child.parameters())
            if any(True for _ in child.parameters(recurse=False)) and not shared:
                fully_shard(child)
            else:
                visit(f"{name}.", child)

    visit("", model)
    fully_shard(model)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """CPU copies of this rank's part of the model's state (a DTensor's: its local shard)."""
    return {k: local_tensor(v).detach().cpu().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def load_snapshot(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy a `snapshot` back into the model, in place."""
    for key, value in model.state_dict().items():
        local_tensor(value).copy_(state[key])


def read_snapshot(path: Path, model: nn.Module) -> dict[str, Tensor]:
    """A `snapshot` read from a safetensors file of the full model: each rank reads only the
    rows of its own shards."""
    from torch.distributed.tensor import Shard

    found = {}
    with safe_open(str(path), framework="pt") as tensors:
        for key, value in model.state_dict().items():
            if not is_sharded(value):
                found[key] = tensors.get_tensor(key)
                continue
            dim = value.placements[0].dim
            coordinate = value.device_mesh.get_local_rank(0)
            size, start = Shard.local_shard_size_and_offset(
                value.shape[dim], value.device_mesh.size(0), coordinate
            )
            rows = (slice(None),) * dim + (slice(start, start + size),)
            found[key] = tensors.get_slice(key)[rows]
    return found


def gather_on_rank0(model: nn.Module) -> dict[str, Tensor]:
    """The full state of a sharded model, on rank 0 (CPU); `{}` on the other ranks. Every rank
    calls it (it is a collective); buffers are rank 0's."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def gather_masks(masks: Sequence[Tensor], params: Sequence[Tensor]) -> list[Tensor]:
    """Whole bool masks on every rank (CPU): a mask of a sharded parameter is this rank's
    shard, gathered here (every rank calls it when any parameter is sharded)."""
    return [
        (sharded_like(m, p).full_tensor() if is_sharded(p) else m).bool().cpu()
        for m, p in zip(masks, params, strict=True)
    ]
