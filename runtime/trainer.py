"""`acdc run` as a library call: `train(recipe, out_dir)` trains the recipe's model through its
schedule and leaves a run directory with the dense and sparse models, metrics and a summary.

`prepare()` builds everything (model, data, compiled recipe, optimizer, runtime) and restores
the newest checkpoint when resuming; `fit()` runs the loop. A run resumed from any checkpoint
ends with weights bitwise equal to an uninterrupted one: shuffling and augmentation are pure
functions of (seed, epoch, batch), and every other piece of state is in the checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from acdc_recipe.runtime import checkpoint as ckpt
from acdc_recipe.runtime.data import (
    EpochSampler,
    augment_batch,
    make_loader,
)
from acdc_recipe.runtime.distributed import (
    all_reduce_sum,
    shutdown,
    verify_replicas,
)
from acdc_recipe.runtime.interrupt import StopRequest, TrainingInterrupted, stop_at_step_boundary
from acdc_recipe.runtime.optim import clip_gradients
from acdc_recipe.runtime.run_summary import (
    RunSummary,
    evaluate,
    exact_sparsity,
    write_summary,
)
from acdc_recipe.runtime.session import (  # noqa: F401 - prepare is public API here too
    TrainingSession,
    TrainingSetupError,
    capture_dense,
    prepare,
    save_model,
    snapshot_step,
)
from acdc_recipe.runtime.sinks import TerminalSink, emptied_layers, emptied_layers_note
from acdc_recipe.schema import Recipe


def _checkpoint(session: TrainingSession, epoch: int, batch: int) -> str | None:
    """Write the checkpoint for this position (rank 0); its file name, or None elsewhere."""
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
        return path.name
    return None


def _interrupted(session: TrainingSession, stop: StopRequest, checkpoint: str | None) -> None:
    """Raise `TrainingInterrupted` at this step boundary, after the checkpoint was written."""
    step = session.runtime.step
    session.emit({"event": "interrupted", "step": step, "checkpoint": checkpoint})
    raise TrainingInterrupted(step, checkpoint or "", stop.signal_number or 0)


def _status(session: TrainingSession) -> str:
    phase = session.runtime.phase
    return f"{phase.kind} {100 * session.runtime.sparsity_target:.0f}%"


def _train_epoch(session: TrainingSession, epoch: int, start_batch: int, stop: StopRequest) -> None:
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
        session.runtime.begin_step()  # phase actions before the forward pass
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
        if session.runtime.step == snapshot_step(session.runtime.timeline):
            capture_dense(session)
        session.loss_sum = session.loss_sum.to(loss.device) + loss.detach().double()
        session.loss_count += 1
        if show:
            mean = float(session.loss_sum) / session.loss_count
            for sink in session.sinks:
                sink.progress(epoch, batch + 1, session.steps_per_epoch, mean, _status(session))
        last_in_epoch = (
            batch + 1 == session.steps_per_epoch or session.runtime.step >= session.total_steps
        )
        periodic = bool(every) and session.runtime.step % every == 0 and not last_in_epoch
        if periodic or (stop.requested and not last_in_epoch):
            written = _checkpoint(session, epoch, batch + 1)
            if stop.requested:
                _interrupted(session, stop, written)


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
    with stop_at_step_boundary(enabled=not session.context.enabled) as stop:
        for epoch in range(start // spe, session.epochs):
            first = start - epoch * spe if epoch == start // spe else 0
            _run_epoch(session, epoch, first, started, stop)
    return _finish(session, started)


def _run_epoch(
    session: TrainingSession, epoch: int, first_batch: int, started: float, stop: StopRequest
) -> None:
    """Train one epoch from `first_batch`, evaluate, checkpoint; stop there if asked to."""
    runtime = session.runtime
    epoch_start = time.perf_counter()
    _train_epoch(session, epoch, first_batch, stop)
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
    written = _checkpoint(session, epoch + 1, 0)
    if stop.requested and runtime.step < session.total_steps:
        _interrupted(session, stop, written)


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
    if emptied := emptied_layers(per_layer):
        notes.append(emptied_layers_note(emptied))
    main = session.context.is_main
    if main and session.dense_state is not None:
        save_model(session, "dense.safetensors", session.dense_state)
    if main and ends_sparse:
        save_model(session, "sparse.safetensors", final_state)
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
