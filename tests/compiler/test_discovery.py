"""Discovery: which parameters are op weights, under which names."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from acdc_recipe.compiler.discovery import discover
from acdc_recipe.compiler.kinds import LAYER_KINDS
from acdc_recipe.compiler.tracing import trace

from .conftest import AttentionNet, BranchyNet, SmallCNN, vision_model


def expected_weights(model: nn.Module) -> set[str]:
    """Op weights counted from the module tree: every layer's weight, MHA's in/out projections."""
    names = set()
    inside_attention = set()
    for path, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            names |= {f"{path}.in_proj_weight", f"{path}.out_proj.weight"}
            inside_attention.add(f"{path}.out_proj")
        elif (
            isinstance(module, tuple(kind.module_type for kind in LAYER_KINDS.values()))
            and path not in inside_attention
        ):
            names.add(f"{path}.weight")
    return names


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16", "convnext_tiny"]
)
def test_torchvision_prunable_sets(name: str) -> None:
    model = vision_model(name)
    found = discover(trace(model))
    weights = {c.name for c in found.candidates if c.kind is not None}
    assert weights == expected_weights(model)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    attention = sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert len(weights) == convs + linears + attention


def test_resnet50_has_53_convs_and_one_linear() -> None:
    found = discover(trace(vision_model("resnet50")))
    kinds = [c.kind for c in found.candidates if c.kind is not None]
    assert kinds.count("Conv2d") == 53 and kinds.count("Linear") == 1


def test_attention_and_functional_linear() -> None:
    found = discover(trace(AttentionNet()))
    by_name = {c.name: c for c in found.candidates}
    assert by_name["attn.in_proj_weight"].kind == "MultiheadAttention"
    assert by_name["attn.out_proj.weight"].kind == "MultiheadAttention"
    assert by_name["attn.out_proj.weight"].layer == "attn.out_proj"
    assert "Linear" in by_name["attn.out_proj.weight"].types
    assert by_name["proj_weight"].op == "linear" and by_name["proj_weight"].kind == "Linear"
    assert by_name["head.weight"].kind == "Linear"
    for never in ("norm.weight", "norm.bias", "proj_bias", "head.bias", "attn.in_proj_bias"):
        assert by_name[never].kind is None
    functional = [s for s in found.sites if s.functional]
    assert [(s.op, s.weights) for s in functional] == [("linear", (("proj_weight", "weight"),))]


def test_separate_qkv_projections() -> None:
    class CrossAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)

        def forward(self, q, k, v):
            return self.attn(q, k, v)[0]

    found = discover(trace(CrossAttention()))
    (site,) = found.sites
    assert [role for _, role in site.weights] == ["q_proj", "k_proj", "v_proj", "out_proj"]


def test_tied_parameters_appear_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(8, 8)
            self.decoder = nn.Linear(8, 8)
            self.decoder.weight = self.encoder.weight

        def forward(self, x):
            return self.decoder(self.encoder(x)) + F.linear(x, self.encoder.weight)

    found = discover(trace(Tied()))
    weights = [c.name for c in found.candidates if c.kind is not None]
    assert weights == ["encoder.weight"]
    assert sum(1 for s in found.sites for n, _ in s.weights if n == "encoder.weight") == 3


def test_fallback_walks_modules() -> None:
    found = discover(trace(BranchyNet()))
    assert [c.name for c in found.candidates if c.kind is not None] == ["conv.weight", "fc.weight"]


def test_layers_inside_leaf_containers_are_found() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)

        def forward(self, x):
            return self.layer(x)

    found = discover(trace(Encoder()))
    weights = {c.name for c in found.candidates if c.kind is not None}
    assert weights == {
        "layer.self_attn.in_proj_weight",
        "layer.self_attn.out_proj.weight",
        "layer.linear1.weight",
        "layer.linear2.weight",
    }


@pytest.mark.slow
def test_names_are_the_same_under_wrappers() -> None:
    model = SmallCNN()
    plain = [c.name for c in discover(trace(model)).candidates]
    compiled = [c.name for c in discover(trace(torch.compile(model))).candidates]
    assert plain == compiled and "conv1.weight" in plain
