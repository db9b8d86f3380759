"""`CompiledRecipe`: what `compile(model, recipe)` returns; the contract with the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from acdc_recipe.compiler.distribution import mask_groups
from acdc_recipe.compiler.plan import MaskGroup, PrunableParam
from acdc_recipe.schema import Recipe
from acdc_recipe.timeline import Timeline

if TYPE_CHECKING:
    from acdc_recipe.runtime.state import SparsityRuntime


@dataclass(frozen=True, eq=False)
class CompiledRecipe:
    """A recipe compiled against one model.

    `module` is the instrumented module: the fx GraphModule (or, when tracing failed, the
    original model) sharing the original parameters, with ``node.meta["acdc"]`` on every
    weight-site node and ``module.acdc_compiled`` pointing back here. Masks are not stored in
    it: the runtime keeps them as a plain list aligned with `parameters`.
    """

    recipe: Recipe
    module: nn.Module
    params: tuple[PrunableParam, ...]  # what gets pruned, in model order
    parameters: list[nn.Parameter]  # aligned with `params`
    timeline: Timeline  # in the recipe's units
    traced: bool
    trace_error: str | None
    warnings: tuple[str, ...]
    recipe_hash: str
    dense: tuple[PrunableParam, ...] = ()  # weights a `dense: true` rule keeps dense
    weight_flops: dict[str, int] = field(default_factory=dict)  # every op weight, pruned or not
    unwrapped: tuple[str, ...] = ()  # wrappers removed before tracing (DDP, torch.compile)
    dual_graph: bool = False  # separate train/eval graphs (Python branches on self.training)
    example_shapes: tuple[tuple[int, ...], ...] = ()  # example inputs used for FLOPs

    def mask_groups(self, overall: float) -> list[MaskGroup]:
        """Mask groups with exact prune counts at an overall sparsity (see `distribution`)."""
        if self.recipe.sparsity is None:
            return []
        return mask_groups(self.params, self.recipe.sparsity, overall)

    def plan(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what plan.json holds)."""
        from acdc_recipe.compiler.emit import build_plan

        return build_plan(self)

    def attach(self, optimizer: Any, steps_per_epoch: int | None = None) -> SparsityRuntime:
        """The runtime that executes this plan through `optimizer`'s step hooks."""
        from acdc_recipe.runtime.state import SparsityRuntime

        return SparsityRuntime(self, optimizer, steps_per_epoch=steps_per_epoch)

    @property
    def dense_forward_flops(self) -> int:
        """Per-sample forward FLOPs of every counted op at density 1."""
        return sum(self.weight_flops.values())
