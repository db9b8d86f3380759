"""What compilation produces: the prunable parameters with their resolved rules, and mask groups.

These dataclasses are the contract between the compiler and the runtime. The runtime never
looks at the recipe's rules again: it asks `CompiledRecipe.mask_groups(overall)` which tensors
share one selection and how many entries to prune in each.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrunableParam:
    """One prunable weight tensor (tied parameters appear once)."""

    name: str  # normalized parameter name, e.g. "layer1.0.conv1.weight"
    layer: str  # owning module path, e.g. "layer1.0.conv1"
    op: str  # "Conv2d", "Linear", "MultiheadAttention", "linear" (functional), ...
    shape: tuple[int, ...]
    rule: int | None  # index of the recipe rule that claimed it; None: the sparsity defaults
    target: float  # sparsity this parameter gets at the recipe's overall target
    pattern: str  # "unstructured", "N:M" or "block:RxC"
    scope: str  # "global" (shares the pool threshold), "layer" (own target)
    dense_flops: int  # forward FLOPs of its op for one sample at density 1 (multiply-add = 2)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class MaskGroup:
    """Tensors that share one magnitude selection.

    `indices` point into the compiled list of prunable parameters. `prune` is how many entries
    (summed over the group) become zero: for "unstructured" the smallest |w| over the whole
    group; for "N:M" and "block:RxC" each tensor is pruned on its own and `prune` is the exact
    count that pattern yields.
    """

    indices: tuple[int, ...]
    prune: int
    pattern: str
