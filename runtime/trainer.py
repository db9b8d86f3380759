"""`acdc run` as a library call: `train(recipe, out_dir)` trains the recipe's model through its
schedule and leaves a run directory with the dense and sparse models, metrics and a summary.

`prepare()` builds everything (model, data, compiled recipe, optimizer, runtime) and restores
the newest checkpoint when resuming; `fit()` runs the loop. A run resumed from any checkpoint
ends with weights bitwise equal to an uninterrupted one: shuffling and augmentation are pure
functions of (seed, epoch, batch), and every other piece of state is in the checkpoint.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from acdc_recipe.errors import UserError
from acdc_recipe.runtime import checkpoint as ckpt
from acdc_recipe.runtime.data import (
    DataBundle,
    EpochSampler,
    augment_batch,
    batches_per_epoch,
    load_data,
    make_loader,
)
from acdc_recipe.runtime.distributed import (
    DistContext,
    all_reduce_sum,
    init_from_environment,
    local_rank_from_environment,
    resolve_device,
    shutdown,
    verify_replicas,
)
from acdc_recipe.runtime.events import (
    MasksComputed,
    PhaseStarted,
    RuntimeEvent,
    event_to_dict,
)
from acdc_recipe.runtime.optim import build_lr_schedule, build_optimizer, clip_gradients
from acdc_recipe.runtime.run_summary import (
    FlopsMeter,
    RunSummary,
    evaluate,
    exact_sparsity,
    write_summary,
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


def _start_fresh(run_dir: Path, overwrite: bool) -> list[str]:
    """Make room for a new run; a previous run is only removed when `overwrite` says so."""
    previous = _previous_run_files(run_dir)
    if previous and not overwrite:
        raise TrainingSetupError(
            f"{run_dir} already holds a run ({', '.join(p.name for p in previous[:4])}"
            f"{', ...' if len(previous) > 4 else ''}); continue it with --resume, replace it "
            "with --overwrite, or choose another --out"
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
    if resume:
        _restore(session)
    elif context.is_main and (removed := _start_fresh(run_dir, overwrite)):
        session.refused = (f"started fresh (--overwrite): removed {', '.join(removed)}",)
    if context.is_main:
        _open_sinks(session)
    runtime.add_listener(lambda event: _on_runtime_event(session, event))
    return session


def _restore(session: TrainingSession) -> None:
    loaded = ckpt.load_latest(session.run_dir, session.compiled.recipe_hash)
    if loaded is None:
        return
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


def _open_sinks(session: TrainingSession) -> None:
    session.run_dir.mkdir(parents=True, exist_ok=True)
    session.sinks = [
        TerminalSink(),
        JsonlSink(session.run_dir / "metrics.jsonl", session.resumed_from),
    ]
    board = tensorboard_sink(session.run_dir / "tensorboard")
    if board is not None:
        session.sinks.append(board)
    from acdc_recipe.loading import dump_recipe

    text = dump_recipe(session.recipe)
    ckpt.write_atomic(
        session.run_dir / "recipe.yaml", lambda t: t.write_text(text, encoding="utf-8")
    )


def _on_runtime_event(session: TrainingSession, event: RuntimeEvent) -> None:
    if isinstance(event, (PhaseStarted, MasksComputed)):
        session.masks_changed = True
    session.emit({**event_to_dict(event), "epoch": event.step / session.steps_per_epoch})


def _snapshot_step(timeline: Any) -> int | None:
    """The step count at which the last dense phase is complete, when a sparse phase follows."""
    last = timeline.last_dense
    return last.end if last is not None and last.end < timeline.length else None


def _capture_dense(session: TrainingSession) -> None:
    """Keep the dense half of the pair: the model right after the last dense step, before the
    next forward pass moves the batch-norm statistics (the runtime's DenseSnapshot event comes
    after that forward)."""
    state = session.model.state_dict()
    session.dense_state = {k: v.detach().cpu().clone() for k, v in state.items()}
    if session.context.is_main:
        _save_model(session, "dense.safetensors", session.dense_state)


def _save_model(session: TrainingSession, name: str, tensors: dict[str, torch.Tensor]) -> None:
    metadata = {"recipe": session.recipe.name, "recipe_hash": session.compiled.recipe_hash}
    ckpt.save_safetensors(session.run_dir / name, tensors, metadata)


def _checkpoint(session: TrainingSession, epoch: int, batch: int) -> None:
    step = session.runtime.step
    if session.context.is_main:
        state = {
            "model": session.model.state_dict(),
            "optimizer": session.optimizer.state_dict(),
            "lr_schedule": session.lr_schedule.state_dict(),
            "runtime": session.runtime.state_dict(),
            "flops": session.flops.state_dict(),
            "rng": ckpt.rng_state(),
            "position": {"epoch": epoch, "batch": batch},
            "loss_sum": float(session.loss_sum),
            "loss_count": session.loss_count,
            "elapsed": session.elapsed,
            "world_size": session.context.world_size,
        }
        path = ckpt.save_checkpoint(session.run_dir, step, state, session.compiled.recipe_hash)
        session.emit({"event": "checkpoint", "step": step, "path": path.name})


def _status(session: TrainingSession) -> str:
    phase = session.runtime.phase
    return f"{phase.kind} {100 * session.runtime.sparsity_target:.0f}%"


def _train_epoch(session: TrainingSession, epoch: int, start_batch: int) -> None:
    spec = session.recipe.train
    sampler = EpochSampler(
        len(session.data.train),
        spec.batch_size,
        spec.seed,
        epoch,
        start_batch,
        session.context.rank,
        session.context.world_size,
    )
    loader = make_loader(session.data.train, sampler, spec.data.num_workers)
    show = any(isinstance(s, TerminalSink) and not s.bars.disable for s in session.sinks)
    session.network.train()
    every = spec.checkpoint_every_steps
    for batch, (inputs, labels) in enumerate(loader, start=start_batch):
        if session.runtime.step >= session.total_steps:
            break
        if spec.data.augment:
            inputs = augment_batch(inputs, spec.seed, epoch, batch)
        inputs = inputs.to(session.device, non_blocking=True)
        labels = labels.to(session.device, non_blocking=True)
        with torch.autocast(session.device.type, dtype=torch.bfloat16, enabled=session.autocast):
            logits = session.network(inputs)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=spec.label_smoothing)
        session.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip is not None:
            session.runtime.mask_gradients()
            clip_gradients(session.model.parameters(), spec.grad_clip)
        session.optimizer.step()
        session.lr_schedule.step()
        if session.masks_changed:
            session.flops.set_masks(session.runtime.masks)
            session.masks_changed = False
        session.flops.count_step()
        if session.runtime.step == _snapshot_step(session.runtime.timeline):
            _capture_dense(session)
        session.loss_sum = session.loss_sum.to(loss.device) + loss.detach().double()
        session.loss_count += 1
        if show:
            mean = float(session.loss_sum) / session.loss_count
            for sink in session.sinks:
                sink.progress(epoch, batch + 1, session.steps_per_epoch, mean, _status(session))
        last_in_epoch = (
            batch + 1 == session.steps_per_epoch or session.runtime.step >= session.total_steps
        )
        if every and session.runtime.step % every == 0 and not last_in_epoch:
            _checkpoint(session, epoch, batch + 1)


def _val_batches(session: TrainingSession) -> Any:
    size, batch = len(session.data.val), session.recipe.train.eval_batch_size
    mine = list(range(session.context.rank, size, session.context.world_size))
    return make_loader(
        session.data.val, [mine[i : i + batch] for i in range(0, len(mine), batch)], 0
    )


def _sync_buffers(session: TrainingSession) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics drift apart between the
    broadcasts DDP does at each forward); a no-op for one process."""
    if session.context.enabled:
        for buffer in session.model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _evaluate(session: TrainingSession) -> tuple[float, float]:
    _sync_buffers(session)
    module = session.compiled.module
    totals = torch.stack(evaluate(module, _val_batches(session), session.device, session.autocast))
    loss, correct, count = all_reduce_sum(totals, session.context).tolist()
    return loss / max(count, 1), correct / max(count, 1)


def fit(session: TrainingSession) -> RunSummary:
    """Train from the session's position to the end of the schedule; write the outputs."""
    started = time.perf_counter() - session.elapsed
    runtime, spe = session.runtime, session.steps_per_epoch
    start = runtime.step
    session.emit(
        {
            "event": "run_started",
            "step": start,
            "recipe": session.recipe.name,
            "epochs": session.epochs,
            "steps_per_epoch": spe,
            "total_steps": session.total_steps,
            "device": str(session.device),
            "world_size": session.context.world_size,
            "resumed_from": session.resumed_from,
            "refused_checkpoints": list(session.refused),
            "phases": [
                {"kind": p.kind, "start": p.start, "end": p.end} for p in runtime.timeline.phases
            ],
        }
    )
    for epoch in range(start // spe, session.epochs):
        epoch_start = time.perf_counter()
        _train_epoch(session, epoch, start - epoch * spe if epoch == start // spe else 0)
        val_loss, top1 = _evaluate(session)
        train_loss = float(session.loss_sum) / max(session.loss_count, 1)
        session.loss_sum, session.loss_count = torch.zeros((), dtype=torch.float64), 0
        session.elapsed = time.perf_counter() - started
        sparsity, _ = exact_sparsity(
            [p.name for p in session.compiled.params], session.compiled.parameters
        )
        session.emit(
            {
                "event": "epoch",
                "step": runtime.step,
                "epoch": epoch,
                "phase": runtime.timeline.phase_at(runtime.step - 1).kind,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "top1": top1,
                "sparsity": sparsity,
                "lr": session.lr_schedule.get_last_lr()[0],
                "seconds": time.perf_counter() - epoch_start,
            }
        )
        _checkpoint(session, epoch + 1, 0)
    return _finish(session, started)


def _finish(session: TrainingSession, started: float) -> RunSummary:
    timeline, notes = session.runtime.timeline, list(session.refused)
    names = [p.name for p in session.compiled.params]
    _sync_buffers(session)
    verify_replicas(
        list(session.model.state_dict().values()), list(session.model.state_dict()), session.context
    )
    final_state = {k: v.detach().cpu().clone() for k, v in session.model.state_dict().items()}
    ends_sparse = bool(timeline.phases) and timeline.phases[-1].kind != "dense"
    final_loss, final_top1 = _evaluate(session)
    dense_loss = dense_top1 = None
    if not ends_sparse:
        session.dense_state, dense_loss, dense_top1 = final_state, final_loss, final_top1
    elif session.dense_state is not None:
        session.model.load_state_dict(session.dense_state)
        dense_loss, dense_top1 = _evaluate(session)
        session.model.load_state_dict(final_state)
    achieved, per_layer = exact_sparsity(names, session.compiled.parameters)
    main = session.context.is_main
    if main and session.dense_state is not None:
        _save_model(session, "dense.safetensors", session.dense_state)
    if main and ends_sparse:
        _save_model(session, "sparse.safetensors", final_state)
    summary = RunSummary(
        recipe=session.recipe.name,
        recipe_hash=session.compiled.recipe_hash,
        run_dir=str(session.run_dir),
        dense_top1=dense_top1,
        dense_loss=dense_loss,
        sparse_top1=final_top1 if ends_sparse else None,
        sparse_loss=final_loss if ends_sparse else None,
        achieved_sparsity=achieved,
        per_layer_sparsity=per_layer,
        training_flops_multiplier=session.flops.training_multiplier(),
        inference_flops_multiplier=session.flops.inference_multiplier(),
        wall_seconds=time.perf_counter() - started,
        epochs=session.epochs,
        steps=session.runtime.step,
        world_size=session.context.world_size,
        device=str(session.device),
        dense_model="dense.safetensors" if session.dense_state is not None else None,
        sparse_model="sparse.safetensors" if ends_sparse else None,
        resumed_from=session.resumed_from,
        notes=tuple(notes + timeline.warnings()),
    )
    if main:
        write_summary(session.run_dir / "summary.json", summary)
    session.emit(
        {"event": "run_finished", "step": session.runtime.step, "summary": summary.to_dict()}
    )
    return summary


def close(session: TrainingSession) -> None:
    for sink in session.sinks:
        sink.close()
    session.runtime.close()
    shutdown(session.context)


def train(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> RunSummary:
    """Train `recipe` into `out_dir` (default runs/<recipe.name>); see the module docstring."""
    session = prepare(recipe, out_dir, resume, device, overwrite)
    try:
        return fit(session)
    finally:
        close(session)
