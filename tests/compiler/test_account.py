"""Every parameter is accounted for: pruned, kept dense by a rule, not prunable by its role,
or pruned by its module type when the graph does not show its layer being applied."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torch.nn import functional as F

from acdc_recipe.compiler import CompileError
from acdc_recipe.compiler.discovery import account, discover
from acdc_recipe.compiler.kinds import layer_kinds
from acdc_recipe.compiler.tracing import trace

from .conftest import compile, make_recipe, vision_model
from .test_flops import counter_flops


def accounted(compiled) -> dict[str, str]:
    """canonical name -> "pruned", "dense" or the reason it is not pruned; every name once."""
    status = {p.name: "pruned" for p in compiled.params}
    for param in compiled.dense:
        assert param.name not in status
        status[param.name] = "dense"
    for name, reason in compiled.not_pruned.items():
        assert name not in status or (reason == "dense" and status[name] == "dense")
        status[name] = reason
    return status


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A helper the tracer keeps whole (like torchvision's shifted_window_attention)."""
    return F.linear(x, weight, bias) * 0.5


fx.wrap("scaled_linear")


class ThroughWrappedFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(scaled_linear(x, self.inner.weight, self.inner.bias))


class SharedAndFunctional(nn.Module):
    """One Linear called twice and held under two names, one layer applied only through
    F.linear, and a norm, a bias and a free parameter that nothing prunes."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.alias = self.shared
        self.by_hand = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, x):
        x = self.alias(self.shared(x))
        x = F.linear(x, self.by_hand.weight, self.by_hand.bias)
        return self.norm(x) * self.scale


@pytest.mark.slow
def test_swin_t_prunes_every_linear_and_conv_and_says_which_it_found_by_type() -> None:
    model = vision_model("swin_t")
    compiled = compile(model, make_recipe((3, 224, 224)))
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(compiled.params) == len(layers) == 53
    by_type = {layer.layer: layer for layer in compiled.found_by_type}
    attention = {
        path for path, m in model.named_modules() if path.endswith(("attn.qkv", "attn.proj"))
    }
    assert set(by_type) == attention and len(attention) == 24
    assert all("shifted_window_attention" in layer.why for layer in by_type.values())
    status = accounted(compiled)
    assert set(status) == {name for name, _ in model.named_parameters()}
    assert set(status.values()) == {"pruned", "bias", "norm"}
    # the attention projections' FLOPs are counted at the F.linear calls inside the function
    assert compiled.dense_forward_flops == counter_flops(model, torch.zeros(1, 3, 224, 224))


def test_a_layer_reached_through_a_wrapped_function_is_pruned_by_type_with_its_flops() -> None:
    model = ThroughWrappedFunction()
    compiled = compile(model, make_recipe((8,)))
    assert [p.name for p in compiled.params] == ["inner.weight", "head.weight"]
    (found,) = compiled.found_by_type
    assert found.layer == "inner" and "scaled_linear" in found.why
    assert compiled.weight_flops == {"inner.weight": 2 * 8 * 16, "head.weight": 2 * 16 * 4}


def test_shared_modules_and_functional_calls_are_accounted() -> None:
    model = SharedAndFunctional()
    compiled = compile(model, make_recipe((8,)))
    assert [p.name for p in compiled.params] == ["shared.weight", "by_hand.weight"]
    assert compiled.found_by_type == ()  # F.linear on a get_attr is a traced functional site
    assert compiled.weight_flops == {"shared.weight": 2 * 2 * 64, "by_hand.weight": 2 * 64}
    status = accounted(compiled)
    assert status == {
        "shared.weight": "pruned",
        "shared.bias": "bias",
        "by_hand.weight": "pruned",
        "by_hand.bias": "bias",
        "norm.weight": "norm",
        "norm.bias": "norm",
        "scale": "other",
    }
    assert [(g.names, g.decision) for g in compiled.tied] == [
        (("shared.weight", "alias.weight"), "pruned"),
        (("shared.bias", "alias.bias"), "bias"),
    ]


def test_an_untraceable_model_is_walked_and_still_accounts_for_everything() -> None:
    class Branchy(SharedAndFunctional):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                x = x + 1
            return super().forward(x)

    compiled = compile(Branchy(), make_recipe((8,)))
    assert not compiled.traced
    assert {p.name for p in compiled.params} == {"shared.weight", "by_hand.weight"}
    assert set(accounted(compiled)) == {n for n, _ in Branchy().named_parameters()}


def test_a_weight_no_site_applies_is_a_compile_error() -> None:
    model = ThroughWrappedFunction()
    found = discover(trace(model))
    without_inner = [site for site in found.sites if site.key != "inner"]
    with pytest.raises(CompileError, match="'inner.weight' of layer 'inner'.*silently"):
        account(model, without_inner, layer_kinds())


def test_kept_dense_and_excluded_weights_are_named() -> None:
    model = SharedAndFunctional()
    recipe = make_recipe((8,), prunable=["Conv2d"], rules=[{"match": "norm", "include": True}])
    compiled = compile(model, recipe)
    status = accounted(compiled)
    assert status["shared.weight"] == status["by_hand.weight"] == "excluded"
    assert status["norm.weight"] == "pruned" and status["norm.bias"] == "pruned"
    recipe = make_recipe((8,), rules=[{"match": "shared", "dense": True}])
    assert accounted(compile(model, recipe))["shared.weight"] == "dense"
