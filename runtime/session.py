"""Setting up a run: model, data, compiled recipe, optimizer, runtime, sinks, and resuming.

`prepare()` builds a `TrainingSession` (and restores the newest checkpoint when resuming); the
runtime's events that write files (the dense snapshot) are handled here too. The loop that
drives a session lives in `trainer.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acdc_recipe.errors import UserError
from acdc_recipe.files import write_text_atomic
from acdc_recipe.runtime import checkpoint as ckpt
from acdc_recipe.runtime.data import (
    DataBundle,
    batches_per_epoch,
    load_data,
)
from acdc_recipe.runtime.distributed import (
    DistContext,
    init_from_environment,
    local_rank_from_environment,
    resolve_device,
)
from acdc_recipe.runtime.events import (
    MasksComputed,
    PhaseStarted,
    RuntimeEvent,
    event_to_dict,
)
from acdc_recipe.runtime.optim import build_lr_schedule, build_optimizer
from acdc_recipe.runtime.run_summary import (
    FlopsMeter,
)
from acdc_recipe.runtime.sinks import JsonlSink, Sink, TerminalSink, tensorboard_sink
from acdc_recipe.schema import Recipe


class TrainingSetupError(UserError, ValueError):
    """The recipe cannot be trained as written (no train section, data that does not fit)."""


@dataclass
class TrainingSession:
    """Everything one training run holds, built by `prepare()`."""

    recipe: Recipe
    run_dir: Path
    device: torch.device
    context: DistContext
    model: nn.Module  # the model as built (state dict keys as the user knows them)
    network: nn.Module  # what the loop calls: compiled module, maybe DDP- and torch.compile-wrapped
    compiled: Any
    runtime: Any
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    data: DataBundle
    steps_per_epoch: int
    total_steps: int
    epochs: int
    flops: FlopsMeter
    sinks: list[Sink] = field(default_factory=list)
    resumed_from: int | None = None
    refused: tuple[str, ...] = ()
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    loss_count: int = 0  # batches summed into loss_sum (this epoch)
    masks_changed: bool = False
    elapsed: float = 0.0
    dense_state: dict[str, torch.Tensor] | None = None

    @property
    def autocast(self) -> bool:
        return self.recipe.train.precision == "bf16" and self.device.type == "cuda"

    def emit(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def _example_inputs(recipe: Recipe, data: DataBundle) -> torch.Tensor:
    shape = recipe.train.model.input_shape or data.sample_shape
    if shape is None:
        return torch.as_tensor(data.train[0][0]).unsqueeze(0)
    return torch.zeros((2, *shape))


def _check_model_fits_data(model: nn.Module, recipe: Recipe, data: DataBundle) -> None:
    """Run one sample through the model so a shape mismatch is a recipe error, not a traceback."""
    sample = torch.as_tensor(data.val[0][0]).unsqueeze(0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(sample.to(device))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise TrainingSetupError(
            f"model {recipe.train.model.name!r} cannot take the samples of data source "
            f"{recipe.train.data.source!r} (shape {tuple(sample.shape[1:])}): {first}; check "
            "train.model.kwargs (e.g. in_features, in_channels) against the data"
        ) from None
    finally:
        model.train(was_training)
    classes = data.num_classes
    if classes is not None and (outputs.dim() != 2 or outputs.shape[1] < classes):
        raise TrainingSetupError(
            f"model {recipe.train.model.name!r} outputs shape {tuple(outputs.shape[1:])} per "
            f"sample, but data source {recipe.train.data.source!r} has {classes} classes; set "
            f"train.model.kwargs.num_classes: {classes}"
        )
    if recipe.train.data.augment and sample.dim() != 4:
        raise TrainingSetupError(
            "train.data.augment needs image data (channels x height x width), but the samples "
            f"of {recipe.train.data.source!r} have shape {tuple(sample.shape[1:])}"
        )


_RUN_FILES = ("metrics.jsonl", "summary.json", "dense.safetensors", "sparse.safetensors")


def _previous_run_files(run_dir: Path) -> list[Path]:
    """Checkpoints and outputs of an earlier run in `run_dir`."""
    found = list(ckpt.list_checkpoints(run_dir))
    return found + [run_dir / name for name in _RUN_FILES if (run_dir / name).exists()]


def _start_fresh(run_dir: Path, overwrite: bool, resuming: bool = False) -> list[str]:
    """Make room for a new run; a previous run is only removed when `overwrite` says so."""
    previous = _previous_run_files(run_dir)
    if previous and not overwrite:
        found = ", ".join(p.name for p in previous[:4]) + (", ..." if len(previous) > 4 else "")
        raise TrainingSetupError(
            f"{run_dir} has no checkpoint to resume from but holds a run's outputs ({found}); "
            "replace it with --overwrite, or choose another --out"
            if resuming
            else f"{run_dir} already holds a run ({found}); continue it with --resume, replace "
            "it with --overwrite, or choose another --out"
        )
    for path in previous:
        path.unlink()
    return [p.name for p in previous]


def prepare(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> TrainingSession:
    """Build the run (and restore its newest checkpoint when `resume`).

    A run directory that already holds a run is refused unless `resume` or `overwrite`.
    """
    if recipe.train is None:
        raise TrainingSetupError(
            f"recipe {recipe.name!r} has no `train` section, so `acdc run` does not know what "
            "to train; add train.model (and train.data), or use the recipe from your own loop"
        )
    from acdc_recipe.compiler import compile as compile_recipe
    from acdc_recipe.compiler.model_factory import build_model

    spec = recipe.train
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / recipe.name
    target_device = resolve_device(device or spec.device, local_rank_from_environment())
    context = init_from_environment(target_device)
    _seed_everything(spec.seed)
    data = load_data(spec.data)
    model = build_model(spec.model).to(target_device)
    _check_model_fits_data(model, recipe, data)
    compiled = compile_recipe(
        model, recipe, example_inputs=_example_inputs(recipe, data).to(target_device)
    )
    steps_per_epoch = batches_per_epoch(len(data.train), spec.batch_size, context.world_size)
    timeline = compiled.timeline
    total_steps = timeline.length * (steps_per_epoch if timeline.unit == "epoch" else 1)
    epochs = -(-total_steps // steps_per_epoch)
    optimizer = build_optimizer(model, spec.optimizer)
    runtime = compiled.attach(optimizer, steps_per_epoch=steps_per_epoch)
    lr_schedule = build_lr_schedule(
        optimizer, spec.lr_schedule, steps_per_epoch, total_steps, spec.optimizer.lr
    )
    network = compiled.module
    if context.enabled:
        ids = [target_device.index] if target_device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(network, device_ids=ids)
    if spec.compile:
        network = torch.compile(network)
    prunable_flops = tuple(p.dense_flops for p in compiled.params)
    fixed_flops = max(0, getattr(compiled, "dense_forward_flops", 0) - sum(prunable_flops))
    flops = FlopsMeter(prunable_flops, fixed_flops)
    session = TrainingSession(
        recipe,
        run_dir,
        target_device,
        context,
        model,
        network,
        compiled,
        runtime,
        optimizer,
        lr_schedule,
        data,
        steps_per_epoch,
        total_steps,
        epochs,
        flops,
    )
    if resume and not _restore(session) and context.is_main:
        _start_fresh(run_dir, overwrite, resuming=True)  # never replace a run silently
    elif not resume and context.is_main and (removed := _start_fresh(run_dir, overwrite)):
        session.refused = (f"started fresh (--overwrite): removed {', '.join(removed)}",)
    if context.is_main and session.resumed_from is None and not overwrite:
        _refuse_a_foreign_recipe_file(run_dir, recipe)
    if context.is_main:
        _open_sinks(session)
    runtime.add_listener(lambda event: _on_runtime_event(session, event))
    return session


def _restore(session: TrainingSession) -> bool:
    """Restore the newest valid checkpoint; False when the run directory has none."""
    loaded = ckpt.load_latest(session.run_dir, session.compiled.recipe_hash)
    if loaded is None:
        return False
    state = loaded.state
    if state["world_size"] != session.context.world_size:
        raise ckpt.CheckpointError(
            f"{loaded.path.name} was written by {state['world_size']} processes and this run has "
            f"{session.context.world_size}; resume with --nproc-per-node {state['world_size']}"
        )
    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.lr_schedule.load_state_dict(state["lr_schedule"])
    session.runtime.load_state_dict(state["runtime"])
    session.flops.load_state_dict(state["flops"])
    session.loss_sum = torch.tensor(float(state["loss_sum"]), dtype=torch.float64)
    session.loss_count = int(state["loss_count"])
    session.elapsed = float(state["elapsed"])
    ckpt.restore_rng_state(state["rng"])
    session.resumed_from = int(state["step"])
    session.refused = loaded.refused
    dense_path = session.run_dir / "dense.safetensors"
    if dense_path.exists():
        session.dense_state = ckpt.load_safetensors(dense_path)
    return True


def _refuse_a_foreign_recipe_file(run_dir: Path, recipe: Recipe) -> None:
    """A run writes its resolved recipe to recipe.yaml; never over a different file there."""
    from acdc_recipe.loading import dump_recipe

    target = run_dir / "recipe.yaml"
    if target.is_file() and target.read_text(encoding="utf-8", errors="replace") != dump_recipe(
        recipe
    ):
        raise TrainingSetupError(
            f"{target} exists and is not this run's resolved recipe, and the run would replace "
            "it; choose another --out, or replace it with --overwrite"
        )


def _open_sinks(session: TrainingSession) -> None:
    try:
        session.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingSetupError(
            f"cannot create the run directory {session.run_dir}: {error.strerror}; "
            "choose another --out"
        ) from None
    session.sinks = [
        TerminalSink(),
        JsonlSink(session.run_dir / "metrics.jsonl", session.resumed_from),
    ]
    board = tensorboard_sink(session.run_dir / "tensorboard")
    if board is not None:
        session.sinks.append(board)
    from acdc_recipe.loading import dump_recipe

    text = dump_recipe(session.recipe)
    write_text_atomic(session.run_dir / "recipe.yaml", text)


def _on_runtime_event(session: TrainingSession, event: RuntimeEvent) -> None:
    if isinstance(event, (PhaseStarted, MasksComputed)):
        session.masks_changed = True
    session.emit({**event_to_dict(event), "epoch": event.step / session.steps_per_epoch})


def snapshot_step(timeline: Any) -> int | None:
    """The step count at which the last dense phase is complete, when a sparse phase follows."""
    last = timeline.last_dense
    return last.end if last is not None and last.end < timeline.length else None


def capture_dense(session: TrainingSession) -> None:
    """Keep the dense half of the pair: the model right after the last dense step, before the
    next forward pass moves the batch-norm statistics (the runtime's DenseSnapshot event comes
    after that forward)."""
    state = session.model.state_dict()
    session.dense_state = {k: v.detach().cpu().clone() for k, v in state.items()}
    if session.context.is_main:
        save_model(session, "dense.safetensors", session.dense_state)


def save_model(session: TrainingSession, name: str, tensors: dict[str, torch.Tensor]) -> None:
    metadata = {"recipe": session.recipe.name, "recipe_hash": session.compiled.recipe_hash}
    ckpt.save_safetensors(session.run_dir / name, tensors, metadata)
