"""CompiledRecipe: mask groups at other targets, and attaching the runtime."""

from __future__ import annotations

import sys
import types

import torch

from acdc_recipe.compiler import compile

from .conftest import make_recipe


def test_mask_groups_follow_overall(small_cnn) -> None:
    compiled = compile(small_cnn, make_recipe((3, 8, 8), scope="erk"))
    total = sum(p.numel for p in compiled.params)
    for overall in (0.3, 0.9, 0.95):
        groups = compiled.mask_groups(overall)
        assert len(groups) == 3 and sum(g.prune for g in groups) == round(overall * total)
    assert all(g.prune == 0 for g in compiled.mask_groups(0.0))


def test_dense_only_recipe_has_nothing_to_prune(small_cnn) -> None:
    from acdc_recipe.schema import Recipe

    recipe = Recipe.model_validate({"name": "dense", "schedule": {"phases": [{"dense": 3}]}})
    compiled = compile(small_cnn, recipe)
    assert compiled.params == () and compiled.mask_groups(0.5) == []
    assert any("no sparsity section" in w for w in compiled.warnings)


def test_attach_builds_the_runtime(small_cnn, monkeypatch) -> None:
    created = []

    class SparsityRuntime:
        def __init__(self, compiled, optimizer, steps_per_epoch=None):
            created.append((compiled, optimizer, steps_per_epoch))

    module = types.ModuleType("acdc_recipe.runtime.state")
    module.SparsityRuntime = SparsityRuntime
    monkeypatch.setitem(sys.modules, "acdc_recipe.runtime.state", module)
    compiled = compile(small_cnn, make_recipe((3, 8, 8)))
    optimizer = torch.optim.SGD(small_cnn.parameters(), lr=0.1)
    runtime = compiled.attach(optimizer, steps_per_epoch=7)
    assert isinstance(runtime, SparsityRuntime)
    assert created == [(compiled, optimizer, 7)]
