"""Resume: checkpoint at every step, restore in a fresh process, finish, compare bitwise.

Run as a script, this file is the fresh process: `python test_resume.py CONFIG CKPT... `
resumes each checkpoint and writes `<ckpt>.final.pt` next to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from acdc_recipe.compiler import compile
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import attach
from acdc_recipe.runtime.state import RuntimeStateError

PHASES = [
    {"dense": 3},
    {"sparse": 4},
    {"dense": 3},
    {"gradual": 4, "initial": 0.3, "update": 2},
    {"sparse": 3},
]
CONFIGS = {
    "sgd_reset": ("sgd", "reset", "step", None),
    "adamw_reactivated_epochs": ("adamw", "reset_reactivated", "epoch", 2),
    "sgd_lamp_min_density": ("sgd", "reset", "step", None),
    "sgd_global_min_per_channel": ("sgd", "reset", "step", None),
}
SPARSITY = {
    "sgd_lamp_min_density": {"target": 0.8, "scope": "lamp", "min_density": 0.1},
    "sgd_global_min_per_channel": {"target": 0.8, "min_per_channel": 2},
}


def build(config: str):
    optimizer_name, policy, unit, steps_per_epoch = CONFIGS[config]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    recipe = Recipe.model_validate(
        {
            "name": "resume",
            "sparsity": SPARSITY.get(config, {"target": 0.8}),
            "schedule": {"unit": unit, "phases": PHASES},
            "optimizer_state": {"on_decompress": policy},
        }
    )
    compiled = compile(model, recipe)
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
    return model, optimizer, attach(compiled, optimizer, steps_per_epoch=steps_per_epoch)


def train_until(model, optimizer, runtime, stop: int) -> None:
    """Train to `stop` completed steps; the batch depends only on the step (deterministic)."""
    while runtime.step < stop:
        generator = torch.Generator().manual_seed(1000 + runtime.step)
        x = torch.randn(16, 6, generator=generator)
        y = torch.randint(0, 3, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def snapshot(model, optimizer, runtime) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "runtime": runtime.state_dict(),
    }


def resume_and_finish(config: str, checkpoint: Path) -> None:
    model, optimizer, runtime = build(config)
    saved = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    runtime.load_state_dict(saved["runtime"])
    train_until(model, optimizer, runtime, runtime.timeline.length)
    torch.save(snapshot(model, optimizer, runtime), checkpoint.with_suffix(".final.pt"))


def assert_same(a, b, path="") -> None:
    """Bitwise equality of nested checkpoint structures (timings excluded)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        keys = set(a) - {"seconds"}
        assert keys == set(b) - {"seconds"}, path
        for key in keys:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_resume_in_a_fresh_process_is_bitwise_identical(config, tmp_path):
    torch.set_num_threads(1)
    model, optimizer, runtime = build(config)
    length = runtime.timeline.length
    checkpoints = []
    for stop in range(1, length):  # every step: each phase boundary and both neighbours
        train_until(model, optimizer, runtime, stop)
        path = tmp_path / f"step{stop:03d}.pt"
        torch.save(snapshot(model, optimizer, runtime), path)
        checkpoints.append(path)
    train_until(model, optimizer, runtime, length)
    uninterrupted = snapshot(model, optimizer, runtime)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, __file__, config, *map(str, checkpoints)], check=True, env=env, timeout=300
    )
    for path in checkpoints:
        resumed = torch.load(path.with_suffix(".final.pt"), weights_only=True)
        assert_same(uninterrupted, resumed, path.name)
    kinds = [event["event"] for event in uninterrupted["runtime"]["history"]]
    assert kinds.count("MasksComputed") == 4 and kinds.count("DenseSnapshot") == 1


def test_resume_mid_sparse_phase_restores_masks_without_recomputing():
    model, optimizer, runtime = build("sgd_reset")
    train_until(model, optimizer, runtime, 5)
    saved = runtime.state_dict()
    assert saved["masks"] is not None and all(m.dtype == torch.bool for m in saved["masks"])
    fresh_model, fresh_optimizer, fresh = build("sgd_reset")
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(saved)
    assert fresh.step == 5 and fresh.sparsity_target == 0.8
    assert all(torch.equal(a, b) for a, b in zip(fresh.masks, runtime.masks))
    assert fresh.history == runtime.history
    train_until(fresh_model, fresh_optimizer, fresh, 6)
    assert len(fresh.history) == len(runtime.history)  # nothing recomputed at step 5


def test_resume_with_another_steps_per_epoch_is_refused():
    _, _, runtime = build("adamw_reactivated_epochs")
    state = runtime.state_dict()
    state["steps_per_epoch"] = 3
    with pytest.raises(RuntimeStateError, match="steps_per_epoch"):
        runtime.load_state_dict(state)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for argument in sys.argv[2:]:
        resume_and_finish(sys.argv[1], Path(argument))
