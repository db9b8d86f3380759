"""`CompiledRecipe`: what `compile(model, recipe)` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from acdc_recipe.compiler.plan import DenseParam, PrunableParam, SparsityPlan
from acdc_recipe.language.schema import Recipe
from acdc_recipe.language.timeline import Timeline

# What the compiler decided for a parameter it does not prune (`CompiledRecipe.not_pruned`).
NOT_PRUNED_REASONS = {
    "dense": "kept dense by a rule",
    "excluded": "weights of kinds not in sparsity.prunable",
    "bias": "biases",
    "norm": "norm parameters",
    "embedding": "embeddings (tied to an output layer or not)",
    "head": "output and classification heads of transformers models (dense unless a rule "
    "matches them)",
    "other": "other parameters (no prunable layer applies them)",
    "weight": "weights (the recipe has no sparsity section)",
}


@dataclass(frozen=True)
class TiedGroup:
    """One parameter reachable under several names, and what was decided for it."""

    names: tuple[str, ...]  # the canonical name first
    decision: str  # "pruned", or a key of NOT_PRUNED_REASONS


@dataclass(frozen=True)
class TypeFoundLayer:
    """A layer whose weights the traced graph does not show being applied: pruned (or not) by
    its module type, like an untraced model's layers."""

    layer: str
    op: str
    weights: tuple[str, ...]
    why: str


@dataclass(frozen=True, eq=False)
class CompiledRecipe:
    """A recipe compiled against one model.

    `module` is the instrumented module: the fx GraphModule (or, when tracing failed, the
    original model) sharing the original parameters, with ``node.meta["acdc"]`` on every
    weight-site node and ``module.acdc_compiled`` pointing back here. `plan` is what the
    engine executes (`acdc_recipe.runtime.attach(compiled, optimizer)`); masks are not stored
    in the module: the engine keeps them as a plain list aligned with `parameters`.
    """

    recipe: Recipe
    module: nn.Module
    plan: SparsityPlan
    parameters: list[nn.Parameter]  # aligned with `plan.params`
    traced: bool
    trace_error: str | None
    warnings: tuple[str, ...]
    dense: tuple[DenseParam, ...] = ()  # weights a `dense: true` rule keeps dense
    weight_flops: dict[str, int] = field(default_factory=dict)  # every op weight, pruned or not
    unwrapped: tuple[str, ...] = ()  # wrappers removed before tracing (DDP, torch.compile)
    dual_graph: bool = False  # separate train/eval graphs (Python branches on self.training)
    example_shapes: tuple[tuple[int, ...], ...] = ()  # example inputs used for FLOPs
    tracer: str = "torch.fx"  # the tracer tried ("torch.fx" or "transformers.utils.fx")
    # Every parameter is in `params`, in `dense`, or here with a key of NOT_PRUNED_REASONS.
    not_pruned: dict[str, str] = field(default_factory=dict)
    tied: tuple[TiedGroup, ...] = ()
    found_by_type: tuple[TypeFoundLayer, ...] = ()

    @property
    def params(self) -> tuple[PrunableParam, ...]:
        """What gets pruned, in model order (aligned with `parameters`)."""
        return self.plan.params

    @property
    def timeline(self) -> Timeline:
        """The schedule, in the recipe's units."""
        return self.plan.timeline

    @property
    def recipe_hash(self) -> str:
        return self.plan.recipe_hash

    @property
    def dense_forward_flops(self) -> int:
        """Per-sample forward FLOPs of every counted op at density 1."""
        return sum(self.weight_flops.values())
