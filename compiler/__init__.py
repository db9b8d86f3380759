"""(model, recipe) -> `CompiledRecipe`: traced module, prunable parameters, the engine's plan, FLOPs.

`LAYER_KINDS` is the registry of prunable layer kinds: add one for a layer of your own
(`LayerKind(type, flops=linear_flops, weights=..., input_axis=...)`).
"""

from acdc_recipe.compiler.compiled import CompiledRecipe, TiedGroup, TypeFoundLayer
from acdc_recipe.compiler.errors import CompileError, ExampleInputError
from acdc_recipe.compiler.flops import (
    FlopsMeter,
    FlopsMultipliers,
    example_inputs_for,
    scheduled_multipliers,
)
from acdc_recipe.compiler.kinds import (
    LAYER_KINDS,
    LayerKind,
    attention_flops,
    conv_flops,
    conv_transpose_flops,
    layer_kinds,
    linear_flops,
)
from acdc_recipe.compiler.passes import compile
from acdc_recipe.compiler.plan import (
    DenseParam,
    InputSample,
    MaskGroup,
    MaskUpdate,
    PrunableParam,
    SparsityPlan,
)

__all__ = [
    "LAYER_KINDS",
    "CompiledRecipe",
    "CompileError",
    "DenseParam",
    "ExampleInputError",
    "FlopsMeter",
    "FlopsMultipliers",
    "InputSample",
    "LayerKind",
    "MaskGroup",
    "MaskUpdate",
    "PrunableParam",
    "SparsityPlan",
    "TiedGroup",
    "TypeFoundLayer",
    "attention_flops",
    "compile",
    "conv_flops",
    "conv_transpose_flops",
    "example_inputs_for",
    "layer_kinds",
    "linear_flops",
    "scheduled_multipliers",
]
