"""What compilation hands the engine: the prunable parameters and, for every phase, the masks.

`SparsityPlan` is self-contained: the resolved scope, pattern and target of every prunable
parameter, and for each mask computation of each phase the mask groups with their exact prune
counts. The engine reads it and nothing else of the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from acdc_recipe.language.schema import DecompressPolicy
from acdc_recipe.language.timeline import Timeline

# How a parameter's prune count is chosen: "global" shares one magnitude threshold with the
# other global parameters, "lamp" one threshold over layer-adaptive scores; "uniform" and
# "erk" get an exact per-layer share of the pool's count; "layer" has its own target (a rule's
# target, an N:M or a block pattern).
ParamScope = Literal["global", "uniform", "erk", "lamp", "layer"]


@dataclass(frozen=True)
class PrunableParam:
    """One prunable weight tensor (tied parameters appear once)."""

    name: str  # canonical parameter name, e.g. "layer1.0.conv1.weight"
    layer: str  # owning module path, e.g. "layer1.0.conv1"
    op: str  # "Conv2d", "Linear", "MultiheadAttention", "linear" (functional), ...
    shape: tuple[int, ...]
    rule: int | None  # index of the recipe rule that claimed it; None: the sparsity defaults
    pattern: str  # "unstructured", "N:M" or "block:RxC"
    scope: ParamScope
    rule_target: float | None  # the claiming rule's target, scaled with the overall target
    target: float  # sparsity this parameter gets at the recipe's target (pool: pool average)
    dense_flops: int  # forward FLOPs of its op for one sample at density 1 (multiply-add = 2)
    input_axis: int = 1  # the axis holding input features: N:M runs along it (Conv1D: 0)
    min_density: float | None = None  # global/lamp pool: the fraction it keeps at least
    min_per_channel: int | None = None  # global/lamp pool: weights each output channel keeps

    @property
    def channels(self) -> int:
        """Output channels: the output axis's length (the axis other than `input_axis` among
        the first two: a conv filter, a Linear row, a Conv1D column); a 1-D tensor is one."""
        if len(self.shape) < 2:
            return 1
        return self.shape[1 if self.input_axis == 0 else 0]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class DenseParam:
    """A default-prunable weight that a `dense: true` rule keeps dense."""

    name: str
    layer: str
    op: str
    shape: tuple[int, ...]
    rule: int
    dense_flops: int


@dataclass(frozen=True)
class MaskGroup:
    """Tensors that share one magnitude selection.

    `indices` point into the plan's prunable parameters. `prune` is how many entries (summed
    over the group) become zero: for "unstructured" the smallest scores over the whole group
    (`score` "magnitude": |w|; "lamp": layer-adaptive scores), member `k` keeping at least
    `floors[k]` entries when `floors` is given, and every output channel of member `k`
    keeping its `channel_floors[k]` largest scores when that is given; for "N:M" and
    "block:RxC" each tensor is pruned on its own and `prune` is the exact count that pattern
    yields.
    """

    indices: tuple[int, ...]
    prune: int
    pattern: str
    score: Literal["magnitude", "lamp"] = "magnitude"
    floors: tuple[int, ...] = ()  # aligned with `indices`; empty: no floor
    channel_floors: tuple[int, ...] = ()  # aligned with `indices`; empty: no channel floor


@dataclass(frozen=True)
class MaskUpdate:
    """One mask computation: the overall target in force from then on, and its mask groups."""

    target: float
    groups: tuple[MaskGroup, ...]


@dataclass(frozen=True)
class InputSample:
    """One sample of the input the recipe was compiled with (the example batch's first tensor
    without its batch dimension): what an export of the model is timed on."""

    shape: tuple[int, ...]
    dtype: str  # "float", or "int64" for token ids


@dataclass(frozen=True)
class SparsityPlan:
    """Everything the engine executes, resolved at compile time.

    `updates[i]` lists the mask computations of `timeline.phases[i]`, aligned with that
    phase's `mask_updates()` (empty for dense phases). Positions come from the timeline, so
    converting it to steps converts the whole plan.
    """

    params: tuple[PrunableParam, ...]
    timeline: Timeline  # in the recipe's units
    updates: tuple[tuple[MaskUpdate, ...], ...]
    on_decompress: DecompressPolicy  # type: ignore[valid-type]
    recipe_hash: str
    sample: InputSample | None = None  # None: compiled without example inputs

    @property
    def names(self) -> list[str]:
        return [param.name for param in self.params]

    def phase_target(self, phase_index: int) -> float:
        """The overall target in force when phase `phase_index` starts (0.0 for dense)."""
        updates = self.updates[phase_index]
        return updates[0].target if updates else 0.0
