"""The models `acdc run` builds: built-ins, the paper's models, import paths, torchvision."""

from acdc_recipe.runtime.train.models.builtin import BUILTIN_MODELS, ResNetCifar, cnn, mlp, resnet20
from acdc_recipe.runtime.train.models.factory import build_model, compile_recipe_model
from acdc_recipe.runtime.train.models.paper import MobileNetV1, WideResNet

__all__ = [
    "BUILTIN_MODELS",
    "MobileNetV1",
    "ResNetCifar",
    "WideResNet",
    "build_model",
    "cnn",
    "compile_recipe_model",
    "mlp",
    "resnet20",
]
