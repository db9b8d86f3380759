"""The paper's models have the published sizes and run on the input sizes they were made for."""

import pytest
import torch

from acdc_recipe.models.paper import MobileNetV1, WideResNet


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_mobilenet_v1_has_its_published_shape():
    model = MobileNetV1()
    params = sum(p.numel() for p in model.parameters())
    assert 4.2e6 < params < 4.3e6  # 4.2M in the MobileNetV1 paper
    assert count(model, torch.nn.Conv2d) == 27 and count(model, torch.nn.Linear) == 1
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_wide_resnet_28_10_has_its_published_shape():
    model = WideResNet(28, 10, num_classes=100)
    params = sum(p.numel() for p in model.parameters())
    assert 36.4e6 < params < 36.6e6  # 36.5M in the WRN paper
    small = WideResNet(16, 1, num_classes=10).eval()
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=27)
