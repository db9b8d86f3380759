"""Optimizer state under the runtime: exact zeros in sparse phases, the decompress policies."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from acdc_recipe.compiler import compile
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import attach
from acdc_recipe.runtime.optimizer_state import (
    MOMENT_KEYS,
    reset_optimizer_state_,
    reset_state_,
    zero_state_where_pruned_,
)

OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_nesterov_wd": lambda ps: torch.optim.SGD(
        ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adam_amsgrad_wd": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-3, amsgrad=True),
    "adamw_wd": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05),
}


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 2))


def state_copy(optimizer) -> dict:
    return {
        id(p): {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)}
        for group in optimizer.param_groups
        for p in group["params"]
    }


phases_strategy = st.lists(
    st.tuples(st.sampled_from(["dense", "sparse"]), st.integers(1, 3)), min_size=2, max_size=5
).filter(lambda items: any(kind == "sparse" for kind, _ in items))


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    phases=phases_strategy,
    optimizer_name=st.sampled_from(sorted(OPTIMIZERS)),
    policy=st.sampled_from(["reset", "keep", "reset_reactivated"]),
    target=st.sampled_from([0.3, 0.5, 0.8, 0.95]),
    seed=st.integers(0, 2**16),
)
def test_sparse_phases_are_exact_and_policies_hold(phases, optimizer_name, policy, target, seed):
    model = tiny_model(seed)
    recipe = Recipe.model_validate(
        {
            "name": "prop",
            "sparsity": {"target": target},
            "schedule": {"unit": "step", "phases": [{kind: n} for kind, n in phases]},
            "optimizer_state": {"on_decompress": policy},
        }
    )
    compiled = compile(model, recipe)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    runtime = attach(compiled, optimizer)
    prunable = {id(p) for p in compiled.parameters}
    generator = torch.Generator().manual_seed(seed)
    previous_masks = None
    for step in range(runtime.timeline.length):
        phase = runtime.timeline.phase_at(step)
        x = torch.randn(16, 5, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), x[:, :2].sin()).backward()
        before = state_copy(optimizer)
        runtime.mask_gradients()  # runs the actions of this step (policy, masks) now
        entering_dense = (
            phase.kind == "dense" and phase.start == step and previous_masks is not None
        )
        if entering_dense:
            check_policy(policy, optimizer, before, compiled.parameters, previous_masks, prunable)
        optimizer.step()
        if phase.kind == "sparse":
            masks = runtime.masks
            total = sum(p.numel for p in compiled.params)  # one global selection
            assert sum(int((m == 0).sum()) for m in masks) == round(runtime.sparsity_target * total)
            for weight, mask in zip(compiled.parameters, masks):
                pruned = mask == 0
                assert torch.equal(weight[pruned], torch.zeros_like(weight[pruned]))
                for key in MOMENT_KEYS:
                    value = optimizer.state[weight].get(key)
                    if value is not None:
                        assert torch.equal(value[pruned], torch.zeros_like(value[pruned]))
            previous_masks = [m.clone() for m in masks]
        elif entering_dense:
            assert runtime.masks is None
            for weight, mask in zip(compiled.parameters, previous_masks):
                trained = (mask == 0) & (weight.grad != 0)
                assert bool((weight[trained] != 0).all()), "pruned entries must train again"
            previous_masks = None


def check_policy(policy, optimizer, before, parameters, masks, prunable):
    pruned = {id(p): m == 0 for p, m in zip(parameters, masks)}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state[p].items():
                old = before[id(p)][key]
                if policy == "reset":
                    assert torch.equal(value, torch.zeros_like(value)), key
                elif policy == "keep" or key == "step" or id(p) not in prunable:
                    assert torch.equal(value, old), key
                else:
                    expected = torch.where(pruned[id(p)], torch.zeros_like(old), old)
                    assert torch.equal(value, expected), key


@pytest.mark.parametrize("amsgrad", [False, True])
def test_reset_adam_equals_a_fresh_adam(amsgrad):
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 3))
    used = torch.optim.Adam([weight], lr=0.1, amsgrad=amsgrad)
    for _ in range(5):
        weight.grad = torch.randn(4, 3)
        used.step()
    start = weight.detach().clone()
    reset_state_(used)
    fresh_weight = nn.Parameter(start.clone())
    fresh = torch.optim.Adam([fresh_weight], lr=0.1, amsgrad=amsgrad)
    for _ in range(3):
        grad = torch.randn(4, 3)
        weight.grad, fresh_weight.grad = grad.clone(), grad.clone()
        used.step()
        fresh.step()
        assert torch.equal(weight, fresh_weight)


def test_reset_sgd_equals_a_fresh_sgd():
    torch.manual_seed(1)
    weight = nn.Parameter(torch.randn(6))
    used = torch.optim.SGD([weight], lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(4):
        weight.grad = torch.randn(6)
        used.step()
    reset_state_(used)
    fresh_weight = nn.Parameter(weight.detach().clone())
    fresh = torch.optim.SGD([fresh_weight], lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(3):
        grad = torch.randn(6)
        weight.grad, fresh_weight.grad = grad.clone(), grad.clone()
        used.step()
        fresh.step()
        assert torch.equal(weight, fresh_weight)


def test_zero_state_where_pruned_touches_only_pruned_positions():
    weight = nn.Parameter(torch.ones(2, 3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    weight.grad = torch.full((2, 3), 2.0)
    optimizer.step()
    before = state_copy(optimizer)[id(weight)]
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    zero_state_where_pruned_(optimizer, [weight], [mask])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizer.state[weight][key], before[key] * mask)
    assert torch.equal(optimizer.state[weight]["step"], before["step"])


def test_unknown_policy_is_a_clear_error():
    weight = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    with pytest.raises(ValueError, match="on_decompress"):
        reset_optimizer_state_(optimizer, "reset_momentum", [weight], None)


@pytest.mark.parametrize("optimizer_name", ["sgd_momentum", "adamw_wd"])
@pytest.mark.parametrize("policy", ["reset", "keep"])
def test_reset_takes_effect_at_the_first_dense_step_from_the_hooks(optimizer_name, policy):
    """With only `optimizer.step()` (no explicit runtime call), the first step of a dense phase
    after a sparse one updates every parameter like a fresh optimizer: reset, not one step late."""
    model = tiny_model(3)
    recipe = Recipe.model_validate(
        {
            "name": "timing",
            "sparsity": {"target": 0.5},
            "schedule": {"unit": "step", "phases": [{"dense": 2}, {"sparse": 2}, {"dense": 2}]},
            "optimizer_state": {"on_decompress": policy},
        }
    )
    compiled = compile(model, recipe)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    attach(compiled, optimizer)
    generator = torch.Generator().manual_seed(3)
    for step in range(5):
        x = torch.randn(16, 5, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), x[:, :2].sin()).backward()
        if step == 4:  # the first dense step after the sparse phase
            twins = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
            for twin, p in zip(twins, model.parameters()):
                twin.grad = p.grad.clone()
            fresh = OPTIMIZERS[optimizer_name](twins)
            fresh.step()
        optimizer.step()
    same = all(torch.equal(p, twin) for p, twin in zip(model.parameters(), twins))
    assert same == (policy == "reset")
