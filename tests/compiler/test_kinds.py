"""The registry of prunable layer kinds: a kind of your own, the most specific match, names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc_recipe.compiler import LAYER_KINDS, CompileError, LayerKind, linear_flops
from acdc_recipe.compiler.kinds import kind_of, layer_kinds
from acdc_recipe.runtime import select_masks

from .conftest import compile, make_recipe


class InputMajorLinear(nn.Module):
    """A linear layer of its own, weight stored (in, out) like transformers' Conv1D."""

    def __init__(self, features_in: int, features_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features_in, features_out))
        self.bias = nn.Parameter(torch.zeros(features_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mine = InputMajorLinear(8, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(self.mine(x))


class NamedLinear(nn.Linear):
    """A subclass of Linear registered as a kind of its own."""


@pytest.fixture
def my_kind(monkeypatch):
    kind = LayerKind(InputMajorLinear, linear_flops, input_axis=0)
    monkeypatch.setitem(LAYER_KINDS, "InputMajorLinear", kind)
    return kind


def test_a_registered_kind_is_prunable_with_its_flops_and_input_axis(my_kind) -> None:
    torch.manual_seed(0)
    model = Net()
    compiled = compile(model, make_recipe((8,), pattern="2:4"))
    by_name = {p.name: p for p in compiled.params}
    assert by_name["mine.weight"].op == "InputMajorLinear"
    assert by_name["mine.weight"].input_axis == 0 and by_name["head.weight"].input_axis == 1
    assert compiled.weight_flops == {"mine.weight": 2 * 8 * 12, "head.weight": 2 * 12 * 4}
    (update,) = {u for phase in compiled.plan.updates for u in phase}
    axes = [p.input_axis for p in compiled.params]
    mine, _ = select_masks(compiled.parameters, update.groups, axes)
    # 2 of every 4 consecutive inputs kept, along axis 0 (inputs) for every output column
    assert torch.equal(mine.reshape(2, 4, 12).sum(dim=1), torch.full((2, 12), 2.0))


def test_an_unregistered_layer_is_not_pruned_and_its_weight_is_other() -> None:
    compiled = compile(Net(), make_recipe((8,)))
    assert [p.name for p in compiled.params] == ["head.weight"]
    assert compiled.not_pruned["mine.weight"] == "other"


def test_the_most_specific_kind_wins(monkeypatch) -> None:
    monkeypatch.setitem(LAYER_KINDS, "NamedLinear", LayerKind(NamedLinear, linear_flops))
    kinds = layer_kinds()
    assert kind_of(NamedLinear(2, 2), kinds) == "NamedLinear"
    assert kind_of(nn.Linear(2, 2), kinds) == "Linear"
    assert kind_of(nn.LayerNorm(2), kinds) is None


def test_prunable_names_are_checked_against_the_registry() -> None:
    with pytest.raises(CompileError, match=r"sparsity.prunable.1.*'Lineer'.*Did you mean 'Linear'"):
        compile(Net(), make_recipe((8,), prunable=["Conv2d", "Lineer"]))
    # an optional library's kind is a valid name whether or not the library is in use
    compiled = compile(Net(), make_recipe((8,), prunable=["Linear", "Conv1D"]))
    assert [p.name for p in compiled.params] == ["head.weight"]
