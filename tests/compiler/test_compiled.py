"""CompiledRecipe and its plan: the mask groups of every mask computation, self-contained."""

from __future__ import annotations

import dataclasses

import torch

from acdc_recipe.compiler.distribution import mask_groups
from acdc_recipe.runtime import attach

from .conftest import compile, make_recipe


def test_mask_groups_follow_overall(small_cnn) -> None:
    compiled = compile(small_cnn, make_recipe((3, 8, 8), scope="erk"))
    total = sum(p.numel for p in compiled.params)
    for overall in (0.3, 0.9, 0.95):
        groups = mask_groups(compiled.params, overall, 0.9)
        assert len(groups) == 3 and sum(g.prune for g in groups) == round(overall * total)
    assert all(g.prune == 0 for g in mask_groups(compiled.params, 0.0, 0.9))


def test_the_plan_lists_every_mask_computation_of_every_phase(small_cnn) -> None:
    compiled = compile(small_cnn, make_recipe((3, 8, 8), scope="erk"))
    plan, total = compiled.plan, sum(p.numel for p in compiled.params)
    assert len(plan.updates) == len(plan.timeline.phases)
    for phase, updates in zip(plan.timeline.phases, plan.updates, strict=True):
        assert len(updates) == len(phase.mask_updates())
        for update in updates:
            assert update.target == 0.9 and len(update.groups) == 3
            assert sum(g.prune for g in update.groups) == round(0.9 * total)
    assert [plan.phase_target(i) for i in range(3)] == [0.0, 0.9, 0.0]


def test_dense_only_recipe_has_nothing_to_prune(small_cnn) -> None:
    from acdc_recipe.language.schema import Recipe

    recipe = Recipe.model_validate({"name": "dense", "schedule": {"phases": [{"dense": 3}]}})
    compiled = compile(small_cnn, recipe)
    assert compiled.params == () and compiled.plan.updates == ((),)
    assert any("no sparsity section" in w for w in compiled.warnings)


def test_the_engine_needs_the_plan_not_the_recipe(small_cnn) -> None:
    compiled = compile(small_cnn, make_recipe((3, 8, 8), scope="uniform"))
    planless = dataclasses.replace(compiled, recipe=None)
    optimizer = torch.optim.SGD(small_cnn.parameters(), lr=0.1)
    runtime = attach(planless, optimizer, steps_per_epoch=1)
    for _ in range(3):
        runtime.begin_step()
        optimizer.zero_grad()
        small_cnn(torch.randn(2, 3, 8, 8)).sum().backward()
        optimizer.step()
    zeros = sum(int((p == 0).sum()) for p in compiled.parameters)
    assert runtime.masks is not None and zeros == round(0.9 * sum(p.numel for p in compiled.params))
