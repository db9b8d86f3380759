"""Data-parallel setup for `acdc run`: read torchrun's environment, pick the backend, check
that replicas agree.

`acdc run --nproc-per-node N` starts its workers with torch elastic in-process
(`acdc_recipe.trainer.launch`); a plain `torchrun ... -m acdc_recipe.cli.main run RECIPE` works
the same way, except that each rank then prints its own error. Gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from acdc_recipe.errors import UserError
from acdc_recipe.runtime.mask_sync import differing_across_ranks, tensor_checksum


class DeviceError(UserError, ValueError):
    """A device was asked for that this machine does not have."""


class ReplicaMismatchError(RuntimeError):
    """Data-parallel replicas hold different weights or masks."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "device 'cuda' was requested but no CUDA GPU is available to PyTorch; "
                "use --device cpu (or train.device: auto)"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference != "cpu":
        raise DeviceError(f"unknown device {preference!r}; expected auto, cpu or cuda")
    return torch.device("cpu")


def init_from_environment(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a single
    process when WORLD_SIZE is unset or 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank)


def local_rank_from_environment() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()  # no rank leaves while another still talks to it (gloo aborts then)
        dist.destroy_process_group()


def all_reduce_sum(values: Tensor, context: DistContext) -> Tensor:
    """Sum `values` over ranks (a no-op for a single process)."""
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_min(values: Tensor, context: DistContext) -> Tensor:
    """The minimum of `values` over ranks (a no-op for a single process)."""
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def verify_replicas(tensors: Sequence[Tensor], names: Sequence[str], context: DistContext) -> None:
    """Raise `ReplicaMismatchError` naming a tensor whose values differ between ranks."""
    if not context.enabled or not tensors:
        return
    differs = differing_across_ranks(tensor_checksum(tensors))
    if differs:
        raise ReplicaMismatchError(
            f"data-parallel ranks hold different values for {names[differs[0]]}"
            + (f" and {len(differs) - 1} more tensors" if len(differs) > 1 else "")
        )
