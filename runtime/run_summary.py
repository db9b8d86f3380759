"""What a finished run measured: accuracies, exact sparsity, and FLOPs as multiples of dense.

FLOPs follow the paper's accounting: a layer's forward FLOPs scale with its density, backward
is twice forward, so a training step costs 3x forward at the densities in force during it.
Prunable layers count at their density (the compiler's per-layer `dense_flops`); the other
weighted ops the compiler counted (`fixed_flops`, e.g. a layer a rule keeps dense) at full cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from acdc_recipe.files import write_text_atomic


@dataclass
class FlopsMeter:
    """Sums the forward FLOPs of every training step at the densities then in force."""

    dense_flops: tuple[int, ...]  # per prunable parameter, one sample at density 1
    fixed_flops: int = 0  # ops that are never pruned, one sample
    densities: list[float] = field(default_factory=list)
    step_flops_sum: float = 0.0
    steps: int = 0

    def __post_init__(self) -> None:
        if not self.densities:
            self.densities = [1.0] * len(self.dense_flops)

    def set_masks(self, masks: Sequence[Tensor] | None) -> None:
        """Take the densities from the masks now in force (None: dense)."""
        if masks is None:
            self.densities = [1.0] * len(self.dense_flops)
        else:
            self.densities = [float(m.count_nonzero()) / m.numel() for m in masks]

    def forward_flops(self) -> float:
        pruned = sum(f * d for f, d in zip(self.dense_flops, self.densities, strict=True))
        return float(self.fixed_flops + pruned)

    def count_step(self) -> None:
        self.step_flops_sum += 3 * self.forward_flops()
        self.steps += 1

    def training_multiplier(self) -> float:
        dense = 3 * (self.fixed_flops + sum(self.dense_flops)) * self.steps
        return self.step_flops_sum / dense if dense else 1.0

    def inference_multiplier(self) -> float:
        total = self.fixed_flops + sum(self.dense_flops)
        return self.forward_flops() / total if total else 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"densities": list(self.densities), "sum": self.step_flops_sum, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.densities = [float(d) for d in state["densities"]]
        self.step_flops_sum, self.steps = float(state["sum"]), int(state["steps"])


def exact_sparsity(
    names: Sequence[str], weights: Sequence[Tensor]
) -> tuple[float, dict[str, float]]:
    """Fraction of exactly-zero entries over all prunable weights, and per parameter."""
    zeros = [int((w.detach() == 0).sum()) for w in weights]
    total = sum(w.numel() for w in weights)
    per_layer = {n: z / w.numel() for n, z, w in zip(names, zeros, weights, strict=True)}
    return (sum(zeros) / total if total else 0.0), per_layer


@dataclass(frozen=True)
class RunSummary:
    """The result of `train()`, also written to summary.json."""

    recipe: str
    recipe_hash: str
    run_dir: str
    dense_top1: float | None
    dense_loss: float | None
    sparse_top1: float | None
    sparse_loss: float | None
    achieved_sparsity: float
    per_layer_sparsity: dict[str, float]
    training_flops_multiplier: float
    inference_flops_multiplier: float
    wall_seconds: float
    epochs: int
    steps: int
    world_size: int
    device: str
    dense_model: str | None
    sparse_model: str | None
    resumed_from: int | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_summary(path: Path, summary: RunSummary) -> None:
    text = json.dumps(summary.to_dict(), indent=2) + "\n"
    write_text_atomic(path, text)


@torch.no_grad()
def evaluate(
    network: torch.nn.Module, batches: Any, device: torch.device, autocast: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(summed loss, correct count, sample count) over `batches`, as float64 tensors."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    was_training = network.training
    network.eval()
    for inputs, labels in batches:
        inputs, labels = inputs.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = network(inputs)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
        count += labels.numel()
    network.train(was_training)
    return loss_sum, correct, count
