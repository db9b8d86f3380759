"""Optimizers and per-iteration learning-rate schedules built from the recipe's train section.

`OPTIMIZERS` and `LR_SCHEDULES` are keyed by the schema's literals. Every schedule is a pure
function of the optimizer step (`lr_factor`), wrapped in a `LambdaLR` stepped each iteration;
epoch-valued settings (warm-up, milestones, step size) are converted with `steps_per_epoch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import nn

from acdc_recipe.language.train_config import LRScheduleSpec, OptimizerSpec


def parameter_groups(model: nn.Module, spec: OptimizerSpec) -> list[dict]:
    """One group with weight decay; with `decay_norm_and_bias=False`, a second group without
    it for every parameter of at most one dimension (biases, norm scales and shifts)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.decay_norm_and_bias or spec.weight_decay == 0:
        return [{"params": params, "weight_decay": spec.weight_decay}]
    decayed = [p for p in params if p.dim() > 1]
    exempt = [p for p in params if p.dim() <= 1]
    return [
        {"params": decayed, "weight_decay": spec.weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]


def _sgd(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)


def _adam(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps)


def _adamw(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps)


OPTIMIZERS: dict[str, Callable[[list[dict], OptimizerSpec], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
}


def build_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The optimizer `spec` names over `model`'s trainable parameters (the schema has checked
    the values torch would refuse)."""
    return OPTIMIZERS[spec.name](parameter_groups(model, spec), spec)


def _constant(
    step: int, spec: LRScheduleSpec, steps_per_epoch: int, total: int, warmup: int
) -> float:
    return 1.0


def _step(step: int, spec: LRScheduleSpec, steps_per_epoch: int, total: int, warmup: int) -> float:
    return spec.gamma ** (step // (spec.step_size * steps_per_epoch))


def _multistep(
    step: int, spec: LRScheduleSpec, steps_per_epoch: int, total: int, warmup: int
) -> float:
    passed = sum(1 for epoch in spec.milestones if step >= epoch * steps_per_epoch)
    return spec.gamma**passed


def _cosine(
    step: int, spec: LRScheduleSpec, steps_per_epoch: int, total: int, warmup: int
) -> float:
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


LR_SCHEDULES: dict[str, Callable[[int, LRScheduleSpec, int, int, int], float]] = {
    "constant": _constant,
    "step": _step,
    "multistep": _multistep,
    "cosine": _cosine,
}


def lr_factor(
    step: int, spec: LRScheduleSpec, steps_per_epoch: int, total_steps: int, peak_lr: float
) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): a linear warm-up over
    `warmup_epochs` reaching the peak at its last step, then the named shape."""
    warmup = round(spec.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    shape = LR_SCHEDULES[spec.name](step, spec, steps_per_epoch, total_steps, warmup)
    if spec.name == "cosine":
        floor = spec.final_lr / peak_lr
        return floor + (1 - floor) * shape
    return shape


def build_lr_schedule(
    optimizer: torch.optim.Optimizer,
    spec: LRScheduleSpec,
    steps_per_epoch: int,
    total_steps: int,
    peak_lr: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over optimizer steps (call `.step()` after every optimizer step)."""
    factor = partial(
        lr_factor,
        spec=spec,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        peak_lr=peak_lr,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (call the runtime's `mask_gradients()` first, so pruned
    positions do not count towards the norm)."""
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
