"""build_model: built-ins, import paths, torchvision names, helpful errors."""

from __future__ import annotations

import pytest
from torch import nn

from acdc_recipe.compiler import CompileError
from acdc_recipe.language.train_config import ModelSpec
from acdc_recipe.models import build_model


def test_builtin_import_path_and_torchvision() -> None:
    assert isinstance(build_model(ModelSpec(name="mlp", kwargs={"in_features": 4})), nn.Module)
    linear = build_model(
        ModelSpec(name="torch.nn:Linear", kwargs={"in_features": 3, "out_features": 2})
    )
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (2, 3)
    bare = build_model(ModelSpec(name="resnet18", kwargs={"num_classes": 7}))
    prefixed = build_model(ModelSpec(name="torchvision:resnet18", kwargs={"num_classes": 7}))
    assert bare.fc.out_features == prefixed.fc.out_features == 7


def test_unknown_name_suggests() -> None:
    with pytest.raises(CompileError, match="unknown model 'resnt50'.*Did you mean 'resnet50'"):
        build_model(ModelSpec(name="resnt50"))
    with pytest.raises(CompileError, match="has no attribute 'Linearr'.*'Linear'"):
        build_model(ModelSpec(name="torch.nn:Linearr"))
    with pytest.raises(CompileError, match="cannot import 'no_such_package'"):
        build_model(ModelSpec(name="no_such_package:thing"))


def test_bad_kwargs_and_non_modules() -> None:
    with pytest.raises(CompileError, match=r"train\.model\.kwargs.*rejected its kwargs"):
        build_model(ModelSpec(name="mlp", kwargs={"nope": 1}))
    with pytest.raises(CompileError, match="not a torch.nn.Module"):
        build_model(ModelSpec(name="builtins:dict"))


def test_a_recipe_input_the_model_cannot_take_is_an_error_at_train_model_input_shape() -> None:
    from acdc_recipe.language.loading import load_recipe_text
    from acdc_recipe.models import compile_model, compile_recipe_model

    text = (
        "name: t\nsparsity: {target: 0.5}\nschedule: {phases: [{sparse: 1}]}\n"
        "train: {model: {name: mlp, kwargs: {in_features: 4}, input_shape: [%s]}}\n"
    )
    good = load_recipe_text(text % "4")
    assert compile_model(build_model(good.train.model), good).dense_forward_flops > 0
    bad = load_recipe_text(text % "5")
    with pytest.raises(CompileError, match=r"recipe key `train\.model\.input_shape`.*one sample"):
        compile_model(build_model(bad.train.model), bad)
    with pytest.raises(CompileError, match=r"train\.model\.input_shape"):
        compile_recipe_model(bad)  # on the meta device first, then on the CPU
