"""What the loop measures: the exact sparsity of the prunable weights, and the loss and
top-1 over a split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

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
