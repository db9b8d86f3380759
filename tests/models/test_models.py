"""Built-in models: output shapes for the inputs they are meant for, and their registry."""

import pytest
import torch

from acdc_recipe.language.train_config import ModelSpec
from acdc_recipe.models import BUILTIN_MODELS, cnn, mlp, resnet20
from acdc_recipe.models.factory import build_model


def test_mlp_flattens_and_classifies():
    model = mlp(in_features=64, hidden=[32, 16], num_classes=7)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 7)
    widths = [m.out_features for m in model if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 16, 7]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_cnn_takes_small_images(shape):
    model = cnn(in_channels=shape[0], num_classes=10, width=4)
    assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("shortcut, params", [("A", 269_722), ("B", 272_474)])
def test_resnet20_has_the_papers_size(shortcut, params):
    model = resnet20(num_classes=10, shortcut=shortcut)
    assert sum(p.numel() for p in model.parameters()) == params
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs) == 19  # 19 3x3 convs + the classifier = 20 weighted layers
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_rejects_a_depth_that_is_not_6n_plus_2():
    from acdc_recipe.models import ResNetCifar

    with pytest.raises(ValueError, match="6n\\+2"):
        ResNetCifar(depth=21)


def test_registry_is_what_the_compiler_builds_from():
    assert set(BUILTIN_MODELS) == {"mlp", "cnn", "resnet20", "mobilenet_v1", "wide_resnet28_10"}
    model = build_model(ModelSpec(name="cnn", kwargs={"width": 4}))
    assert isinstance(model[0], torch.nn.Conv2d) and model[0].out_channels == 4
