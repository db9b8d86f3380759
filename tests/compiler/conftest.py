"""Tiny models and recipes for the compiler tests."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from acdc_recipe.compiler import CompiledRecipe, example_inputs_for
from acdc_recipe.compiler import compile as compile_recipe
from acdc_recipe.language.schema import Recipe


def make_recipe(input_shape: tuple[int, ...] | None = None, **sparsity: Any) -> Recipe:
    """A short AC/DC recipe; keyword arguments go into the sparsity section."""
    data: dict[str, Any] = {
        "name": "test",
        "sparsity": {"target": 0.9, **sparsity},
        "schedule": {
            "acdc": {
                "epochs": 18,
                "warmup": 2,
                "sparse": 2,
                "dense": 2,
                "last_dense": 2,
                "final_sparse": 4,
            }
        },
    }
    if input_shape is not None:
        data["train"] = {"model": {"name": "mlp", "input_shape": list(input_shape)}}
    return Recipe.model_validate(data)


def compile(model: nn.Module, recipe: Recipe, example_inputs: Any = None) -> CompiledRecipe:  # noqa: A001
    """The compiler, given one zero sample of the test recipe's `train.model.input_shape` as
    its example inputs when the recipe names one (as `acdc compile` does)."""
    if example_inputs is None and recipe.train is not None and recipe.train.model.input_shape:
        spec = recipe.train.model
        example_inputs = example_inputs_for(model, spec.input_shape, spec.input_dtype)
    return compile_recipe(model, recipe, example_inputs)


class AttentionNet(nn.Module):
    """Embedding-free transformer-ish block: MultiheadAttention plus a functional linear."""

    def __init__(self, dim: int = 16, heads: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.proj_weight = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.proj_bias = nn.Parameter(torch.zeros(dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(x, x, x)
        x = self.norm(x + attended)
        x = F.relu(F.linear(x, self.proj_weight, self.proj_bias))
        return self.head(x.mean(dim=1))


class BranchyNet(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if x.sum() > 0:
            x = x.relu()
        return self.fc(x.mean(dim=(2, 3)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


@functools.cache
def vision_model(name: str) -> nn.Module:
    """A torchvision model with random weights, built once per test session (do not mutate)."""
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None)
