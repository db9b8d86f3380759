"""What a finished run measured (summary.json): accuracies, exact sparsity, and FLOPs as
multiples of dense (counted by the compiler's `FlopsMeter`, the paper's accounting, step by
step). Plain data: `acdc report` reads it without torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acdc_recipe.files import write_text_atomic


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
