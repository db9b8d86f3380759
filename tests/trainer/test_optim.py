"""Optimizers from the recipe and the per-iteration learning-rate schedules."""

import math

import pytest
import torch

from acdc_recipe.language.train_config import LRScheduleSpec, OptimizerSpec
from acdc_recipe.models import cnn
from acdc_recipe.trainer.optim import build_lr_schedule, build_optimizer, lr_factor


def test_norms_and_biases_can_be_exempt_from_weight_decay():
    model = cnn(width=4)
    spec = OptimizerSpec(name="sgd", weight_decay=5e-4, decay_norm_and_bias=False, nesterov=True)
    optimizer = build_optimizer(model, spec)
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"]) and all(
        p.dim() == 1 for p in exempt["params"]
    )
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    assert decayed["nesterov"] and decayed["momentum"] == 0.9


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_family(name, cls):
    spec = OptimizerSpec(name=name, lr=1e-3, betas=(0.8, 0.95), weight_decay=0.01)
    optimizer = build_optimizer(cnn(width=4), spec)
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    assert len(optimizer.param_groups) == 1  # decay_norm_and_bias defaults to True


def test_cosine_with_linear_warmup_reaches_peak_and_final_lr():
    spec = LRScheduleSpec(name="cosine", warmup_epochs=2, final_lr=0.01)
    factors = [
        lr_factor(s, spec, steps_per_epoch=10, total_steps=100, peak_lr=0.1) for s in range(100)
    ]
    assert factors[0] == pytest.approx(0.05) and factors[19] == pytest.approx(1.0)
    assert factors[20] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(factors[20:], factors[21:]))
    assert lr_factor(100, spec, 10, 100, 0.1) == pytest.approx(0.1)  # final_lr / lr


def test_step_and_multistep_convert_epochs_to_steps():
    multistep = LRScheduleSpec(name="multistep", milestones=(2, 5), gamma=0.1)
    values = [lr_factor(s, multistep, 4, 40, 1.0) for s in (7, 8, 19, 20)]
    assert values == pytest.approx([1.0, 0.1, 0.1, 0.01])
    step = LRScheduleSpec(name="step", step_size=3, gamma=0.5)
    assert [lr_factor(s, step, 2, 40, 1.0) for s in (5, 6, 12)] == pytest.approx([1, 0.5, 0.25])


def test_schedule_steps_every_iteration():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimizerSpec(lr=0.2))
    schedule = build_lr_schedule(
        optimizer, LRScheduleSpec(name="constant", warmup_epochs=1), 4, 20, 0.2
    )
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])


def test_values_torch_would_refuse_are_refused_by_the_schema():
    with pytest.raises(ValueError, match="nesterov: true needs name: sgd and a momentum above 0"):
        OptimizerSpec(momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="betas must each lie in"):
        OptimizerSpec(name="adam", betas=(1.5, 0.9))
