"""Prunable parameters sharded by FSDP2: their local shards, and how those tile the full tensors.

`torch.distributed.fsdp.fully_shard` replaces every parameter by a DTensor split along one
dimension (dim 0 unless a `shard_placement_fn` says otherwise) over a 1-D device mesh: rank `r`
holds the `r`-th `torch.chunk` of that dimension, possibly none of it. Between
`optimizer.step()` and the next forward the parameters are sharded, and that is when the
engine acts: masks are plain tensors shaped like this rank's local shard, and choosing masks,
masking weights and gradients and zeroing optimizer state all read and write local shards.

A dim-0 shard is one contiguous block of the full tensor's row-major order, and the blocks
come in rank order. So the global magnitude selection needs only sums over ranks (its
histograms, then the per-rank tie counts) to keep exactly the entries a single process keeps
from the same full weights: `Sharding` carries those sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Shard

from acdc_recipe.compiler import CompiledRecipe, SparsityPlan
from acdc_recipe.errors import UserError
from acdc_recipe.language.schema import parse_pattern


class ShardingError(UserError, ValueError):
    """Prunable parameters are sharded in a way the engine cannot prune exactly."""


@dataclass(frozen=True)
class Sharding:
    """How tensors are split over the ranks of `group`: tensor `i` along dimension `dims[i]`.

    `block` gives FSDP2's split (rank `r` holds the `r`-th `torch.chunk`), which the pattern
    checks read; the magnitude selection itself needs only that, on dim 0, each rank holds one
    row-major block of every tensor and the blocks come in rank order.
    """

    group: dist.ProcessGroup | None  # None: the default process group
    rank: int  # this process's position in `group`
    world_size: int
    shapes: tuple[tuple[int, ...], ...]  # the full tensors' shapes
    dims: tuple[int, ...]

    @property
    def total(self) -> int:
        """Elements of the full tensors together."""
        return sum(prod(shape) for shape in self.shapes)

    def numel(self, index: int) -> int:
        return prod(self.shapes[index])

    def subset(self, indices: Sequence[int]) -> Sharding:
        """The same split, for the tensors at `indices` only."""
        return dataclasses.replace(
            self,
            shapes=tuple(self.shapes[i] for i in indices),
            dims=tuple(self.dims[i] for i in indices),
        )

    def block(self, index: int, rank: int) -> tuple[int, int]:
        """(length, start) along `dims[index]` of the block `rank` holds of tensor `index`."""
        size, start = Shard.local_shard_size_and_offset(
            self.shapes[index][self.dims[index]], self.world_size, rank
        )
        return int(size), int(start)

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over the ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def max_(self, tensor: Tensor) -> Tensor:
        """The maximum of `tensor` over the ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return tensor

    def by_rank(self, local: Tensor) -> Tensor:
        """Every rank's `local` (same shape everywhere), stacked in rank order: one sum."""
        table = torch.zeros((self.world_size, *local.shape), dtype=local.dtype, device=local.device)
        table[self.rank] = local
        return self.sum_(table)


def is_sharded(tensor: Tensor) -> bool:
    return isinstance(tensor, DTensor)


def local_tensor(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (a view: writing it writes the parameter); a plain tensor
    is its own local tensor."""
    if isinstance(tensor, DTensor):
        with torch.no_grad():
            return tensor.to_local()
    return tensor


def local_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [local_tensor(t) for t in tensors]


def local_grads(params: Sequence[Tensor]) -> list[Tensor | None]:
    """Each parameter's gradient as a local tensor (None where there is none)."""
    return [None if p.grad is None else local_tensor(p.grad) for p in params]


def sharded_like(local: Tensor, like: DTensor) -> DTensor:
    """`local` (shaped like `like`'s local shard, e.g. a mask) as a DTensor sharded like `like`;
    `.full_tensor()` then gathers the full tensor on every rank."""
    return DTensor.from_local(
        local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride()
    )


def sharding_of(tensors: Sequence[Tensor], names: Sequence[str] | None = None) -> Sharding | None:
    """The split of `tensors` (all FSDP2 DTensors on one 1-D mesh), or None when none is a
    DTensor. Anything else raises `ShardingError` naming the tensor."""
    flags = [isinstance(t, DTensor) for t in tensors]
    if not any(flags):
        return None
    label = (lambda i: f"parameter '{names[i]}'") if names else (lambda i: f"tensor {i}")
    if not all(flags):
        plain = flags.index(False)
        raise ShardingError(
            f"{label(plain)} is not sharded while {label(flags.index(True))} is: every module "
            "holding a pruned weight must be inside a fully_shard'ed module, so that all masks "
            "are chosen over the same ranks"
        )
    mesh = tensors[0].device_mesh
    dims = []
    for i, tensor in enumerate(tensors):
        if tensor.device_mesh != mesh or mesh.ndim != 1:
            raise ShardingError(
                f"{label(i)} is sharded over a device mesh of {tensor.device_mesh.ndim} "
                "dimensions or another mesh than the other pruned weights; the engine supports "
                "FSDP2 over one 1-D mesh (fully_shard without a hybrid mesh)"
            )
        placement = tensor.placements[0]
        if not isinstance(placement, Shard) or placement.dim < 0:
            raise ShardingError(
                f"{label(i)} has placement {placement}, not a shard of one dimension as "
                "fully_shard makes it"
            )
        dims.append(placement.dim)
    return Sharding(
        group=mesh.get_group(0),
        rank=mesh.get_local_rank(0),
        world_size=mesh.size(0),
        shapes=tuple(tuple(t.shape) for t in tensors),
        dims=tuple(dims),
    )


def check_pattern(
    sharding: Sharding, index: int, pattern: str, name: str, input_axis: int = 1
) -> None:
    """Raise `ShardingError` naming the layer if its shards cannot hold `pattern` exactly.

    Unstructured and block masks rank entries across the whole tensor, so they need the
    row-major blocks of a dim-0 split (and, for blocks, whole block rows on every rank, of a
    weight whose input axis is 1); N:M runs along the input channels, so any split works that
    leaves every run of `m` on one rank.
    """
    kind, a, b = parse_pattern(pattern)
    dim = sharding.dims[index]
    shards = [sharding.block(index, r) for r in range(sharding.world_size)]
    if kind == "n:m":
        broken = dim == input_axis and any(size % b or start % b for size, start in shards)
        if broken:
            raise ShardingError(
                f"layer '{name}' has pattern {pattern} along its "
                f"{sharding.shapes[index][input_axis]} "
                f"input channels, but they are sharded over {sharding.world_size} ranks in "
                f"blocks of {[size for size, _ in shards]}, which split runs of {b}; shard it "
                "on dim 0 (fully_shard's default) or use a world size that divides the "
                f"channels into multiples of {b}"
            )
        return
    if dim != 0:
        raise ShardingError(
            f"layer '{name}' is sharded on dim {dim}; {pattern} masks choose over the whole "
            "tensor and need it sharded on dim 0 (fully_shard's default placement)"
        )
    if kind == "block" and input_axis != 1:
        raise ShardingError(
            f"layer '{name}' stores its input channels on dim {input_axis}; sharded {pattern} "
            "masks need them on dim 1 (prune it unstructured or N:M, or keep it unsharded)"
        )
    if kind == "block" and any(size % a or start % a for size, start in shards):
        raise ShardingError(
            f"layer '{name}' has pattern {pattern}, but its {sharding.shapes[index][0]} rows are "
            f"sharded over {sharding.world_size} ranks in blocks of "
            f"{[size for size, _ in shards]}, which split blocks of {a} rows; use a world size "
            f"that leaves every rank a multiple of {a} rows"
        )


def plan_sharding(params: Sequence[Tensor], plan: SparsityPlan) -> Sharding | None:
    """The split of the prunable `params` (None when not sharded), checked against every
    parameter's pattern so that a layout the engine cannot prune exactly fails at attach."""
    sharding = sharding_of(params, plan.names)
    for i, spec in enumerate(plan.params if sharding is not None else ()):
        check_pattern(sharding, i, spec.pattern, spec.name, spec.input_axis)
    if sharding is not None and any(spec.scope == "lamp" for spec in plan.params):
        raise ShardingError(LAMP_NEEDS_WHOLE_LAYERS)
    for i, spec in enumerate(plan.params if sharding is not None else ()):
        whole_channels = len(spec.shape) >= 2 and spec.input_axis != 0 and sharding.dims[i] == 0
        if spec.min_per_channel and not whole_channels:
            raise ShardingError(
                f"min_per_channel keeps the largest weights of every output channel of layer "
                f"'{spec.name}', but its output channels are split over the processes (FSDP2 "
                f"shards dim {sharding.dims[i]} of its shape {list(spec.shape)}); leave the "
                "layer out of min_per_channel with a rule (min_per_channel: 0), or use "
                "distributed: ddp"
            )
    return sharding


LAMP_NEEDS_WHOLE_LAYERS = (
    "scope: lamp scores every weight against the larger weights of its whole layer, and these "
    "layers are sharded over processes (FSDP2); use scope: global with min_density, which is "
    "exact over the shards, to keep every layer alive"
)


def live_parameters(compiled: CompiledRecipe, optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The prunable parameters the optimizer updates, aligned with `compiled.params`.

    `fully_shard` replaces a module's parameters by DTensors after compilation; a compiled
    parameter the optimizer does not hold is looked up again by name in `compiled.module`.
    When anything is sharded, every prunable parameter must be one the optimizer holds, so
    masks are never applied to a stale copy.
    """
    updated = [p for group in optimizer.param_groups for p in group["params"]]
    held = {id(p) for p in updated}
    found = []
    for spec, param in zip(compiled.params, compiled.parameters, strict=True):
        if id(param) not in held:
            try:
                current = compiled.module.get_parameter(spec.name)
            except AttributeError:
                current = param
            param = current if id(current) in held else param
        found.append(param)
    if any(isinstance(p, DTensor) for p in [*found, *updated]):
        for spec, param in zip(compiled.params, found, strict=True):
            if id(param) not in held:
                raise ShardingError(
                    f"parameter '{spec.name}' is not one the optimizer updates (fully_shard "
                    "replaced it, and the compiled module does not hold the new one); attach "
                    "acdc_recipe.runtime.sharding.rebind(compiled, model) after fully_shard "
                    "and building the optimizer"
                )
    return found


def rebind(compiled: CompiledRecipe, model: nn.Module) -> CompiledRecipe:
    """`compiled` with its prunable parameters taken by name from `model`, e.g. the DTensors
    `fully_shard(model)` put in place of the parameters compilation saw."""
    return dataclasses.replace(
        compiled, parameters=[model.get_parameter(name) for name in compiled.plan.names]
    )
