"""(model, recipe) -> `CompiledRecipe`: traced module, prunable parameters, targets, FLOPs."""

from acdc_recipe.compiler.compiled import CompiledRecipe
from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.flops import FlopsMultipliers, flops_multipliers, scheduled_multipliers
from acdc_recipe.compiler.model_factory import build_model, compile_plan
from acdc_recipe.compiler.passes import compile, recipe_hash
from acdc_recipe.compiler.plan import MaskGroup, PrunableParam

__all__ = [
    "CompiledRecipe",
    "CompileError",
    "FlopsMultipliers",
    "MaskGroup",
    "PrunableParam",
    "build_model",
    "compile",
    "compile_plan",
    "flops_multipliers",
    "recipe_hash",
    "scheduled_multipliers",
]
