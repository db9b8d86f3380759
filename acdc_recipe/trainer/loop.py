"""`acdc run` as a library call: `train(recipe, run_dir)` trains the recipe's model through its
schedule and leaves a run directory with the dense and sparse models, metrics and a summary.

`setup.prepare()` builds the session (and restores the newest checkpoint when resuming);
`fit()` runs the loop; `close()` releases what the session holds. The loss is `objective.py`'s
cross-entropy: per sample for a classifier, per token for a language model, as the data
source's labels say.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from acdc_recipe.compiler.tracing import unwrap
from acdc_recipe.formats.mask_file import Masks, save_masks
from acdc_recipe.formats.records import (
    EpochEnded,
    Note,
    RunDiverged,
    RunFinished,
    RunInterrupted,
    RunStarted,
)
from acdc_recipe.formats.run_dir import RunDir, StartPlan
from acdc_recipe.formats.summary import RunSummary, write_summary
from acdc_recipe.language.schema import Recipe
from acdc_recipe.models.objective import cross_entropy
from acdc_recipe.runtime.events import emptied_layers_note
from acdc_recipe.runtime.sharding import is_sharded, local_tensors
from acdc_recipe.runtime.threshold import NonFiniteWeightError, check_finite
from acdc_recipe.trainer import fsdp
from acdc_recipe.trainer.data import EpochSampler, augment_batch, make_loader
from acdc_recipe.trainer.distributed import (
    all_reduce_min,
    all_reduce_sum,
    shutdown,
    verify_replicas,
)
from acdc_recipe.trainer.interrupt import (
    StopRequest,
    TrainingInterrupted,
    stop_at_step_boundary,
)
from acdc_recipe.trainer.measure import evaluate, exact_sparsity
from acdc_recipe.trainer.optim import clip_gradients
from acdc_recipe.trainer.resume import write_checkpoint
from acdc_recipe.trainer.session import TrainingSession
from acdc_recipe.trainer.setup import prepare, save_model
from acdc_recipe.trainer.sinks import StepUpdate, emptied_layers


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped before the step applied it."""

    def __init__(self, step: int, epoch: int, loss: float | None, checkpoint: str | None) -> None:
        super().__init__(f"the run diverged at step {step} (loss {loss})")
        self.step, self.epoch, self.loss, self.checkpoint = step, epoch, loss, checkpoint


def train(
    recipe: Recipe,
    run_dir: RunDir | str | Path | None = None,
    start: StartPlan | None = None,
    **options: Any,
) -> RunSummary:
    """Train `recipe` into `run_dir` (default runs/<recipe name>); `start` and `options` as
    `prepare`'s (`RunOptions`: resume, overwrite, device, threads, log_every)."""
    session = prepare(recipe, run_dir, start, **options)
    try:
        return fit(session)
    finally:
        close(session)


def fit(session: TrainingSession) -> RunSummary:
    """Train from the session's position to the end of the schedule; write the outputs."""
    started = time.perf_counter() - session.progress.elapsed
    runtime, spe = session.runtime, session.length.steps_per_epoch
    start = runtime.step
    session.emit(
        RunStarted(
            step=start,
            recipe=session.recipe.name,
            epochs=session.length.epochs,
            steps_per_epoch=spe,
            total_steps=session.length.total_steps,
            device=str(session.device),
            world_size=session.context.world_size,
            threads=torch.get_num_threads(),
            resumed_from=session.resumed_from,
            phases=[
                {"kind": p.kind, "start": p.start, "end": p.end} for p in runtime.timeline.phases
            ],
            layers=[
                {"name": p.name, "op": p.op, "shape": list(p.shape)}
                for p in session.compiled.params
            ],
        )
    )
    for note in session.notes:
        session.emit(Note(start, note))
    with stop_at_step_boundary(enabled=not session.context.enabled) as stop:
        for epoch in range(start // spe, session.length.epochs):
            first = start - epoch * spe if epoch == start // spe else 0
            _run_epoch(session, epoch, first, started, stop)
    return _finish(session, started)


def close(session: TrainingSession) -> None:
    for sink in session.sinks:
        sink.close()
    session.runtime.close()
    shutdown(session.context)


def _run_epoch(
    session: TrainingSession, epoch: int, first_batch: int, started: float, stop: StopRequest
) -> None:
    """Train one epoch from `first_batch`, evaluate, checkpoint; stop there if asked to."""
    runtime = session.runtime
    epoch_start = time.perf_counter()
    _train_epoch(session, epoch, first_batch, stop)
    val_loss, top1 = _evaluate(session)
    train_loss = session.progress.mean_loss()
    session.progress.reset_epoch()
    session.progress.elapsed = time.perf_counter() - started
    sparsity, _ = exact_sparsity(session.compiled.plan.names, session.compiled.parameters)
    session.emit(
        EpochEnded(
            step=runtime.step,
            epoch=epoch,
            phase=runtime.timeline.phase_at(runtime.step - 1).kind,
            train_loss=train_loss,
            val_loss=val_loss,
            top1=top1,
            sparsity=sparsity,
            lr=session.lr_schedule.get_last_lr()[0],
            seconds=time.perf_counter() - epoch_start,
        )
    )
    written = _checkpoint(session, epoch)
    if stop.requested and runtime.step < session.length.total_steps:
        _interrupted(session, stop, written)


def _train_epoch(session: TrainingSession, epoch: int, start_batch: int, stop: StopRequest) -> None:
    spec, runtime, length = session.spec, session.runtime, session.length
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
    session.network.train()
    every = spec.checkpoint_every_steps
    clock, samples = time.perf_counter(), 0
    for batch, (inputs, labels) in enumerate(loader, start=start_batch):
        if runtime.step >= length.total_steps:
            break
        if spec.data.augment:
            inputs = augment_batch(inputs, spec.seed, epoch, batch)
        inputs = inputs.to(session.device, non_blocking=True)
        labels = labels.to(session.device, non_blocking=True)
        runtime.begin_step()  # phase actions before the forward pass
        with torch.autocast(session.device.type, dtype=torch.bfloat16, enabled=session.autocast):
            output = session.network(inputs)
        loss = cross_entropy(output, labels, label_smoothing=spec.label_smoothing)
        _stop_if_diverged(session, loss, epoch)  # before any non-finite value reaches a weight
        session.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip is not None:
            runtime.mask_gradients()
            clip_gradients(session.model.parameters(), spec.grad_clip)
        session.optimizer.step()
        session.lr_schedule.step()
        session.flops.count()
        session.progress.add_loss(loss)
        samples += len(labels)
        session.show_progress(
            StepUpdate(
                epoch=epoch,
                batch=batch + 1,
                batches=length.steps_per_epoch,
                loss=session.progress.mean_loss(),
                lr=session.lr_schedule.get_last_lr()[0],
                samples_per_second=samples / max(time.perf_counter() - clock, 1e-9),
                status=f"{runtime.phase.kind} {100 * runtime.sparsity_target:.0f}%",
            )
        )
        last_in_epoch = batch + 1 == length.steps_per_epoch or runtime.step >= length.total_steps
        periodic = bool(every) and runtime.step % every == 0 and not last_in_epoch
        if periodic or (stop.requested and not last_in_epoch):
            written = _checkpoint(session, epoch)
            if stop.requested:
                _interrupted(session, stop, written)


def _stop_if_diverged(session: TrainingSession, loss: torch.Tensor, epoch: int) -> None:
    """Stop with `TrainingDiverged` when this step's loss is not finite on any rank."""
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if not bool(all_reduce_min(finite, session.context)):
        step = session.runtime.step
        session.emit(RunDiverged(step, float(loss.detach()), session.last_checkpoint))
        raise TrainingDiverged(step, epoch, float(loss.detach()), session.last_checkpoint)


def _checkpoint(session: TrainingSession, epoch: int) -> str | None:
    """Write a checkpoint of this step, after checking nothing in it is NaN or infinite (on
    any rank: each checks what it holds)."""
    names, tensors = zip(*session.model.state_dict().items(), strict=True)
    floating = [(n, t) for n, t in zip(names, tensors, strict=True) if t.is_floating_point()]
    try:
        check_finite(local_tensors([t for _, t in floating]), [n for n, _ in floating])
        finite = torch.ones((), device=session.device)
    except NonFiniteWeightError:
        finite = torch.zeros((), device=session.device)
    if not bool(all_reduce_min(finite, session.context)):
        step = session.runtime.step
        session.emit(RunDiverged(step, None, session.last_checkpoint))
        raise TrainingDiverged(step, epoch, None, session.last_checkpoint) from None
    return write_checkpoint(session)


def _interrupted(session: TrainingSession, stop: StopRequest, checkpoint: str | None) -> None:
    """Raise `TrainingInterrupted` at this step boundary, after the checkpoint was written."""
    step = session.runtime.step
    session.emit(RunInterrupted(step, checkpoint))
    raise TrainingInterrupted(step, checkpoint or "", stop.signal_number or 0)


def _val_batches(session: TrainingSession) -> Any:
    size, batch = len(session.data.val), session.spec.eval_batch_size
    world = session.context.world_size
    mine = list(range(session.context.rank, size, world))
    loader = make_loader(
        session.data.val, [mine[i : i + batch] for i in range(0, len(mine), batch)], 0
    )
    if not session.sharded:
        return loader
    return _padded(loader, math.ceil(math.ceil(size / world) / batch), session)


def _padded(batches: Any, count: int, session: TrainingSession) -> Any:
    """`batches`, then empty ones up to `count`: every forward of a sharded model gathers its
    shards from all ranks, so every rank must run as many."""
    done = 0
    for batch in batches:
        done += 1
        yield batch
    inputs, label = session.data.val[0]
    empty = (torch.as_tensor(inputs).unsqueeze(0)[:0], torch.as_tensor(label).reshape(1)[:0])
    for _ in range(count - done):
        yield empty


def _sync_buffers(session: TrainingSession) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics drift apart between the
    broadcasts DDP does at each forward); a no-op for one process."""
    if session.context.enabled:
        for buffer in session.model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _evaluate(session: TrainingSession) -> tuple[float, float]:
    """(mean loss, top-1) on the validation split, through the network without its DDP or
    torch.compile wrappers (ranks evaluate different numbers of batches)."""
    _sync_buffers(session)
    network = unwrap(session.network)[0]
    totals = torch.stack(evaluate(network, _val_batches(session), session.device, session.autocast))
    loss, correct, count = all_reduce_sum(totals, session.context).tolist()
    return loss / max(count, 1), correct / max(count, 1)


def _write_models(
    session: TrainingSession, final_state: dict[str, torch.Tensor], ends_sparse: bool
) -> None:
    """The final model, from rank 0: the dense model for a schedule ending dense, else the
    sparse model and its masks by parameter name (the dense half was written at its snapshot,
    `capture_dense`). A sharded run gathers its final model and masks here, once."""
    masks = session.runtime.masks or ()
    full_masks = fsdp.gather_masks(masks, session.compiled.parameters) if ends_sparse else []
    patterns = {p.name: p.pattern for p in session.compiled.params}
    if session.sharded:
        final_state = fsdp.gather_on_rank0(session.model)
    if not session.context.is_main:
        return
    if not ends_sparse:
        save_model(session, session.run_dir.dense_model, final_state)
        return
    save_model(session, session.run_dir.sparse_model, final_state)  # dense: at its snapshot
    masks = Masks(dict(zip(session.compiled.plan.names, full_masks, strict=True)), patterns)
    save_masks(session.run_dir.masks, masks, session.recipe.name, session.compiled.recipe_hash)


def _finish(session: TrainingSession, started: float) -> RunSummary:
    timeline, notes = session.runtime.timeline, list(session.notes)
    names = session.compiled.plan.names
    _sync_buffers(session)
    state = session.model.state_dict()
    replicas = {k: v for k, v in state.items() if not is_sharded(v)}  # FSDP2: the buffers
    verify_replicas(list(replicas.values()), list(replicas), session.context)
    if session.sharded:
        final_state, load = fsdp.snapshot(session.model), partial(fsdp.load_snapshot, session.model)
    else:
        final_state = {k: v.detach().cpu().clone() for k, v in state.items()}
        load = session.model.load_state_dict
    ends_sparse = bool(timeline.phases) and timeline.phases[-1].kind != "dense"
    final_loss, final_top1 = _evaluate(session)
    dense_loss = dense_top1 = None
    if not ends_sparse:
        session.dense_state, dense_loss, dense_top1 = final_state, final_loss, final_top1
    elif session.dense_state is not None:
        # training is over: detach the engine, so every layer computes with its own forward
        # again (a layer on sparse kernels would compute the dense twin masked)
        session.runtime.close()
        load(session.dense_state)
        dense_loss, dense_top1 = _evaluate(session)
        load(final_state)
    achieved, per_layer = exact_sparsity(names, session.compiled.parameters)
    if emptied := emptied_layers(per_layer):
        notes.append(emptied_layers_note(emptied))
    _write_models(session, final_state, ends_sparse)
    main = session.context.is_main
    multipliers = session.flops.multipliers()
    summary = RunSummary(
        recipe=session.recipe.name,
        recipe_hash=session.compiled.recipe_hash,
        run_dir=str(session.run_dir.path),
        dense_top1=dense_top1,
        dense_loss=dense_loss,
        sparse_top1=final_top1 if ends_sparse else None,
        sparse_loss=final_loss if ends_sparse else None,
        achieved_sparsity=achieved,
        per_layer_sparsity=per_layer,
        training_flops_multiplier=multipliers.training,
        inference_flops_multiplier=multipliers.inference,
        wall_seconds=time.perf_counter() - started,
        epochs=session.length.epochs,
        steps=session.runtime.step,
        world_size=session.context.world_size,
        threads=torch.get_num_threads(),
        device=str(session.device),
        dense_model=session.run_dir.dense_model.name if session.dense_state is not None else None,
        sparse_model=session.run_dir.sparse_model.name if ends_sparse else None,
        resumed_from=session.resumed_from,
        notes=tuple(notes + timeline.warnings()),
    )
    if main:
        write_summary(session.run_dir.summary, summary)
    session.emit(RunFinished(session.runtime.step, summary.to_dict()))
    return summary
