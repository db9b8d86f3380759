"""`build_model(spec)`: the model a recipe's `train.model` names, and the recipe compiled
against it.

Resolution order: a built-in name (`BUILTIN_MODELS`), a transformers language model built from
its config (`transformers:gpt2`), an import path `package.module:callable`, then a torchvision
model (`torchvision:resnet50` or bare `resnet50`).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acdc_recipe.compiler import (
    CompiledRecipe,
    CompileError,
    ExampleInputError,
    compile,
    example_inputs_for,
)
from acdc_recipe.language.schema import Recipe
from acdc_recipe.language.train_config import ModelSpec
from acdc_recipe.models.builtin import BUILTIN_MODELS
from acdc_recipe.models.transformers_models import PREFIX, transformers_factory

_PATH = ("train", "model", "name")


def torchvision_models() -> dict[str, Callable[..., nn.Module]]:
    """torchvision's classification/segmentation/detection builders by name; empty without it."""
    try:
        from torchvision import models
    except ImportError:
        return {}
    return {name: models.get_model_builder(name) for name in models.list_models()}


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the model `spec` names, passing `spec.kwargs`; raise `CompileError` if unknown."""
    factory = resolve_factory(spec.name)
    try:
        model = factory(**spec.kwargs)
    except CompileError:
        raise
    except (TypeError, ValueError) as error:  # the constructor's own argument checks
        raise CompileError(
            f"model {spec.name!r} rejected its kwargs {spec.kwargs}: {error}",
            ("train", "model", "kwargs"),
        ) from None
    if not isinstance(model, nn.Module):
        raise CompileError(
            f"{spec.name!r} returned a {type(model).__name__}, not a torch.nn.Module", _PATH
        )
    return model


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The callable behind a model name (see the module docstring for the order)."""
    builtins = BUILTIN_MODELS
    if name in builtins:
        return builtins[name]
    if name.startswith(PREFIX):
        return transformers_factory(name)
    module_name, colon, attribute = name.partition(":")
    if colon and module_name != "torchvision":
        return _import_callable(module_name, attribute, name)
    vision = torchvision_models()
    key = attribute if colon else name
    if key in vision:
        return vision[key]
    known = sorted(builtins) + sorted(vision)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    vision_note = "" if vision else " (torchvision is not installed, so its models are unavailable)"
    raise CompileError(
        f"unknown model {name!r}.{hint} Built-in models: {', '.join(sorted(builtins)) or 'none'}; "
        f"torchvision models: {len(vision)} names such as resnet50{vision_note}; a transformers "
        "language model from its config, 'transformers:gpt2'; or give an import path "
        "'package.module:callable'.",
        _PATH,
    )


def _import_callable(module_name: str, attribute: str, name: str) -> Callable[..., nn.Module]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CompileError(
            f"cannot import {module_name!r} for model {name!r}: {error}", _PATH
        ) from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            options = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, options, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise CompileError(f"{module_name!r} has no attribute {attribute!r}{hint}", _PATH)
        target = getattr(target, part)
    if not callable(target):
        raise CompileError(f"{name!r} is not callable", _PATH)
    return target


INPUT_SHAPE = ("train", "model", "input_shape")


def example_inputs(model: nn.Module, spec: ModelSpec) -> tuple[torch.Tensor, ...] | None:
    """One zero sample of `spec.input_shape` as a batch (None when the recipe gives none)."""
    if spec.input_shape is None:
        return None
    return example_inputs_for(model, spec.input_shape, spec.input_dtype)


def compile_model(model: nn.Module, recipe: Recipe, inputs: Any = None) -> CompiledRecipe:
    """`recipe` compiled against `model`, on `inputs` or else one zero sample of the recipe's
    train.model.input_shape; a model that does not run on that sample is an error at that key
    (arguments of the wrong kind are `compile`'s TypeError)."""
    typed = isinstance(recipe, Recipe) and isinstance(model, nn.Module)
    if inputs is None and typed and recipe.train is not None:
        try:
            return compile(model, recipe, example_inputs(model, recipe.train.model))
        except ExampleInputError as error:
            raise CompileError(
                f"{error}: set train.model.input_shape to one sample's shape (no batch "
                "dimension) and train.model.input_dtype (int64 for token ids)",
                INPUT_SHAPE,
            ) from None
    return compile(model, recipe, inputs)


def compile_recipe_model(recipe: Recipe) -> CompiledRecipe:
    """`recipe` compiled against its `train.model`, built on the meta device.

    A plan needs shapes, not weights, so nothing is allocated or initialised. A model that only
    runs on real tensors (data-dependent control flow) is rebuilt on the CPU.
    """
    if recipe.train is None:
        raise CompileError(
            f"recipe {recipe.name!r} has no `train.model`, so there is no model to build; add "
            "train.model (name and input_shape), or call acdc_recipe.compile(model, recipe)",
            ("train",),
        )
    try:
        with torch.device("meta"):
            model = build_model(recipe.train.model)
        return compile(model, recipe, example_inputs(model, recipe.train.model))
    except ExampleInputError:
        pass  # it may run on real tensors only: try once more on the CPU
    return compile_model(build_model(recipe.train.model), recipe)
