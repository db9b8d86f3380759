"""`TrainingSession`: what one `acdc run` holds while it trains (built by `setup.prepare`)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from acdc_recipe.compiler import CompiledRecipe, FlopsMeter
from acdc_recipe.errors import UserError
from acdc_recipe.formats.records import Record
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.language.loading import dump_recipe
from acdc_recipe.language.schema import Recipe
from acdc_recipe.language.train_config import TrainSpec
from acdc_recipe.runtime import SparsityRuntime
from acdc_recipe.trainer.data import DataBundle
from acdc_recipe.trainer.distributed import DistContext
from acdc_recipe.trainer.sinks import Sink, StepUpdate


class TrainingSetupError(UserError, ValueError):
    """The recipe cannot be trained as written (no train section, data that does not fit)."""


def default_threads() -> int:
    """torch threads for a run: every core this process may use but one, at least one.

    torch's own default (all physical cores) makes every op wait for every thread; on a
    machine where anything else runs (a checkpoint's file writes, another process) a descheduled
    thread stalls each op for a time slice: measured on 2 cores, a quickstart step took 33 ms
    with 2 threads against 1.4 ms with 1 while another process was busy.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - 1))


@dataclass(frozen=True)
class RunOptions:
    """How `acdc run` runs a recipe, as opposed to what it trains."""

    resume: bool = False  # continue from the newest valid checkpoint in the run directory
    overwrite: bool = False  # replace a previous run in the run directory
    device: str | None = None  # overrides train.device
    threads: int | None = None  # torch threads; None: default_threads()
    log_every: float = 10.0  # seconds between step lines off a terminal


@dataclass(frozen=True)
class RunLength:
    """How long the run is, in optimizer steps of this process."""

    steps_per_epoch: int
    total_steps: int

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)


@dataclass
class Progress:
    """The running totals a checkpoint keeps: this epoch's loss so far and the time spent."""

    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    loss_count: int = 0  # batches summed into loss_sum
    elapsed: float = 0.0  # seconds of training before this process started

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum.to(loss.device) + loss.detach().double()
        self.loss_count += 1

    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(self.loss_count, 1)

    def reset_epoch(self) -> None:
        self.loss_sum, self.loss_count = torch.zeros((), dtype=torch.float64), 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum = torch.tensor(float(state["loss_sum"]), dtype=torch.float64)
        self.loss_count = int(state["loss_count"])
        self.elapsed = float(state["elapsed"])


@dataclass(kw_only=True)
class TrainingSession:
    """One run: the model and what trains it, where it writes, and how far it has come."""

    recipe: Recipe
    run_dir: RunDir
    device: torch.device
    context: DistContext
    model: nn.Module  # owns the state dict, with the names the user knows
    network: nn.Module  # what the loop calls: the compiled module, maybe DDP/torch.compile-wrapped
    compiled: CompiledRecipe
    runtime: SparsityRuntime
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    data: DataBundle
    length: RunLength
    flops: FlopsMeter
    progress: Progress = field(default_factory=Progress)
    sinks: list[Sink] = field(default_factory=list)
    resumed_from: int | None = None
    notes: list[str] = field(default_factory=list)  # for the summary, one sentence each
    dense_state: dict[str, torch.Tensor] | None = None  # sharded runs: this rank's shards
    last_checkpoint: str | None = None

    @functools.cached_property
    def resolved_recipe(self) -> str:
        """The recipe's resolved text (recipe.yaml, and every checkpoint holds it), made once:
        YAML is slow to write and the recipe never changes during a run."""
        return dump_recipe(self.recipe)

    @property
    def spec(self) -> TrainSpec:
        assert self.recipe.train is not None  # prepare() refuses recipes without one
        return self.recipe.train

    @property
    def sharded(self) -> bool:
        """Parameters, gradients and optimizer state sharded over the processes (FSDP2)."""
        return self.context.enabled and self.spec.distributed == "fsdp"

    @property
    def autocast(self) -> bool:
        return self.spec.precision == "bf16" and self.device.type == "cuda"

    def emit(self, record: Record) -> None:
        for sink in self.sinks:
            sink.write(record)

    def show_progress(self, update: StepUpdate) -> None:
        for sink in self.sinks:
            sink.progress(update)
