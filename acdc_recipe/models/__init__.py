"""The models a recipe's `train.model` names (built-ins, the paper's models, transformers
models from their configs, import paths, torchvision), built and compiled against the recipe;
and what their outputs mean (`objective`: logits, the loss, top-1)."""

from acdc_recipe.models.builtin import BUILTIN_MODELS, ResNetCifar, cnn, mlp, resnet20
from acdc_recipe.models.factory import (
    build_model,
    compile_model,
    compile_recipe_model,
    example_inputs,
)
from acdc_recipe.models.paper import MobileNetV1, WideResNet

__all__ = [
    "BUILTIN_MODELS",
    "MobileNetV1",
    "ResNetCifar",
    "WideResNet",
    "build_model",
    "cnn",
    "compile_model",
    "compile_recipe_model",
    "example_inputs",
    "mlp",
    "resnet20",
]
