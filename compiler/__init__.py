"""(model, recipe) -> `CompiledRecipe`: traced module, prunable parameters, the engine's plan, FLOPs."""

from acdc_recipe.compiler.compiled import CompiledRecipe
from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.flops import FlopsMeter, FlopsMultipliers, scheduled_multipliers
from acdc_recipe.compiler.passes import compile
from acdc_recipe.compiler.plan import (
    DenseParam,
    MaskGroup,
    MaskUpdate,
    PrunableParam,
    SparsityPlan,
)

__all__ = [
    "CompiledRecipe",
    "CompileError",
    "DenseParam",
    "FlopsMeter",
    "FlopsMultipliers",
    "MaskGroup",
    "MaskUpdate",
    "PrunableParam",
    "SparsityPlan",
    "compile",
    "scheduled_multipliers",
]
