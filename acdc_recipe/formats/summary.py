"""What a finished run measured: accuracies, exact sparsity, and FLOPs as multiples of dense
(counted by the compiler's `FlopsMeter`, the paper's accounting, step by step)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from acdc_recipe.files import write_text_atomic
from acdc_recipe.models.objective import correct_and_count, summed_loss
from acdc_recipe.runtime.masks import mask_sparsity
from acdc_recipe.runtime.sharding import local_tensors, sharding_of


def exact_sparsity(
    names: Sequence[str], weights: Sequence[Tensor]
) -> tuple[float, dict[str, float]]:
    """Fraction of exactly-zero entries over all prunable weights, and per parameter (of the
    full weights when they are FSDP2 shards: every rank calls it)."""
    overall, per_layer = mask_sparsity(local_tensors(weights), sharding_of(weights))
    return overall, dict(zip(names, per_layer, strict=True))


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
    threads: int
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
    """(summed loss, correct count, labelled positions) over `batches`, as float64 tensors:
    per sample for a classifier, per token for a language model (`objective.py`)."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    was_training = network.training
    network.eval()
    for inputs, labels in batches:
        inputs, labels = inputs.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            output = network(inputs)
        loss_sum += summed_loss(output, labels)
        right, labelled = correct_and_count(output, labels)
        correct += right
        count += labelled
    network.train(was_training)
    return loss_sum, correct, count
