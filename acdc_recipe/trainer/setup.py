"""Setting up a run, one `_setup_*` step at a time; `prepare()` calls them in order.

distributed context and device -> seed -> data -> model and compiled recipe -> FSDP2 shards
(`train.distributed: fsdp`) -> run length -> optimizer and LR schedule -> runtime -> the
network the loop calls -> run directory (resume or start fresh) -> sinks -> the runtime's
events. The loop that drives the session is `loop.py`.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acdc_recipe.compiler import CompiledRecipe, FlopsMeter
from acdc_recipe.compiler import compile as compile_recipe
from acdc_recipe.errors import RecipeError
from acdc_recipe.files import write_text_atomic
from acdc_recipe.formats import checkpoint as ckpt
from acdc_recipe.formats.run_dir import RunDir, RunDirectoryError, StartPlan
from acdc_recipe.language.loading import dump_recipe, load_recipe_text
from acdc_recipe.language.schema import Recipe
from acdc_recipe.language.train_config import RESUMABLE_KEYS, TrainSpec, is_resumable
from acdc_recipe.models import build_model
from acdc_recipe.models.objective import fits
from acdc_recipe.runtime import DenseSnapshot, MasksComputed, PhaseStarted, RuntimeEvent, attach
from acdc_recipe.runtime.sharding import rebind
from acdc_recipe.trainer import fsdp
from acdc_recipe.trainer import sharded_checkpoint as sharded_ckpt
from acdc_recipe.trainer.data import DataBundle, batches_per_epoch, load_data
from acdc_recipe.trainer.distributed import (
    DistContext,
    init_from_environment,
    local_rank_from_environment,
    resolve_device,
)
from acdc_recipe.trainer.optim import build_lr_schedule, build_optimizer
from acdc_recipe.trainer.resume import recipe_changes, restore
from acdc_recipe.trainer.session import (
    RunLength,
    RunOptions,
    TrainingSession,
    TrainingSetupError,
    default_threads,
)
from acdc_recipe.trainer.sinks import JsonlSink, TerminalSink, tensorboard_sink


def prepare(
    recipe: Recipe,
    run_dir: RunDir | str | Path | None = None,
    start: StartPlan | None = None,
    **options: Any,
) -> TrainingSession:
    """Build the run in `run_dir` (default runs/<recipe name>), restoring its newest checkpoint
    when resuming; `options` are `RunOptions` fields (resume, overwrite, device, threads,
    log_every). `start` is `run_dir.plan_start(...)` when the caller has checked the folder
    already (`acdc run` does, before importing torch); a run directory that already holds a run
    is refused unless resume or overwrite.
    """
    run = RunOptions(**options)
    spec = _train_section(recipe)
    if not isinstance(run_dir, RunDir):
        run_dir = RunDir.of(recipe.name, run_dir)
    if start is None:
        start = run_dir.plan_start(dump_recipe(recipe), resume=run.resume, overwrite=run.overwrite)
    torch.set_num_threads(run.threads or default_threads())
    target, context = _setup_distributed(spec, run.device)
    _seed_everything(spec.seed)
    data = load_data(spec.data)
    model, compiled = _setup_model(recipe, data, target)
    sharded = spec.distributed == "fsdp" and context.enabled
    if sharded:
        fsdp.shard_model(model)
        compiled = rebind(compiled, model)
    length = _setup_length(compiled, data, spec, context)
    optimizer, lr_schedule = _setup_optimizer(model, spec, length)
    if sharded and start.kind == "resume" and run_dir.checkpoint_folders():
        sharded_ckpt.create_optimizer_state(optimizer)  # before the runtime counts steps
    session = TrainingSession(
        recipe=recipe,
        run_dir=run_dir,
        device=target,
        context=context,
        model=model,
        network=_setup_network(compiled, model, spec, context, target),
        compiled=compiled,
        runtime=attach(
            compiled,
            optimizer,
            steps_per_epoch=length.steps_per_epoch,
            sparse_kernels=spec.sparse_kernels,
        ),
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        data=data,
        length=length,
        flops=FlopsMeter(compiled.weight_flops),
    )
    _setup_run_dir(session, start)
    if context.is_main:
        _setup_sinks(session, run.log_every)
    session.runtime.add_listener(partial(_on_runtime_event, session))
    return session


def _train_section(recipe: Recipe) -> TrainSpec:
    if recipe.train is None:
        raise TrainingSetupError(
            f"recipe {recipe.name!r} has no `train` section, so `acdc run` does not know what "
            "to train; add train.model (and train.data), or use the recipe from your own loop"
        )
    return recipe.train


def _setup_distributed(spec: TrainSpec, device: str | None) -> tuple[torch.device, DistContext]:
    target = resolve_device(device or spec.device, local_rank_from_environment())
    return target, init_from_environment(target)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def _setup_model(
    recipe: Recipe, data: DataBundle, device: torch.device
) -> tuple[nn.Module, CompiledRecipe]:
    model = build_model(recipe.train.model).to(device)
    _check_model_fits_data(model, recipe, data)
    sample = torch.as_tensor(data.train[0][0])
    shape = recipe.train.model.input_shape or data.sample_shape or tuple(sample.shape)
    dtype = None if sample.is_floating_point() else sample.dtype  # token ids stay integers
    example = torch.zeros((2, *shape), dtype=dtype)
    compiled = compile_recipe(model, recipe, example_inputs=example.to(device))
    return model, compiled


def _check_model_fits_data(model: nn.Module, recipe: Recipe, data: DataBundle) -> None:
    """Run one sample through the model so a shape mismatch is a recipe error, not a traceback."""
    sample, labels = (torch.as_tensor(t).unsqueeze(0) for t in data.val[0])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    name, source = recipe.train.model.name, recipe.train.data.source
    try:
        with torch.no_grad():
            outputs = model(sample.to(device))
        problem = fits(outputs, labels.to(device), data.num_classes)
    except (RuntimeError, IndexError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        tokens = not sample.is_floating_point() and data.num_classes is not None
        fix = (
            f"the data's token ids go up to {data.num_classes - 1}, so set "
            f"train.model.kwargs.vocab_size: {data.num_classes} (or more)"
            if tokens
            else "check train.model.kwargs (e.g. in_features, in_channels) against the data"
        )
        raise TrainingSetupError(
            f"model {name!r} cannot take the samples of data source {source!r} (shape "
            f"{tuple(sample.shape[1:])}, {sample.dtype}): {first}; {fix}"
        ) from None
    finally:
        model.train(was_training)
    if problem is not None:
        classes = data.num_classes
        what = "kwargs.vocab_size" if labels.dim() > 1 else "kwargs.num_classes"
        raise TrainingSetupError(
            f"model {name!r} does not fit data source {source!r}: {problem}"
            + (f"; set train.model.{what}: {classes}" if classes is not None else "")
        )
    if recipe.train.data.augment and sample.dim() != 4:
        raise TrainingSetupError(
            "train.data.augment needs image data (channels x height x width), but the samples "
            f"of {source!r} have shape {tuple(sample.shape[1:])}"
        )


def _setup_length(
    compiled: CompiledRecipe, data: DataBundle, spec: TrainSpec, context: DistContext
) -> RunLength:
    steps_per_epoch = batches_per_epoch(len(data.train), spec.batch_size, context.world_size)
    return RunLength(steps_per_epoch, compiled.timeline.to_steps(steps_per_epoch).length)


def _setup_optimizer(
    model: nn.Module, spec: TrainSpec, length: RunLength
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    try:
        optimizer = build_optimizer(model, spec.optimizer)
    except ValueError as error:  # a value torch refuses that the schema let through
        raise TrainingSetupError(f"recipe key `train.optimizer`: {error}") from None
    lr_schedule = build_lr_schedule(
        optimizer, spec.lr_schedule, length.steps_per_epoch, length.total_steps, spec.optimizer.lr
    )
    return optimizer, lr_schedule


def _setup_network(
    compiled: CompiledRecipe,
    model: nn.Module,
    spec: TrainSpec,
    context: DistContext,
    device: torch.device,
) -> nn.Module:
    """What the loop calls: the compiled module (in DDP with several processes), or under
    FSDP2 the sharded model itself (its modules carry the shards' gather hooks)."""
    network = compiled.module
    if context.enabled and spec.distributed == "fsdp":
        network = model
    elif context.enabled:
        ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(network, device_ids=ids)
    if spec.compile:
        network = torch.compile(network)
    return network


def _setup_run_dir(session: TrainingSession, start: StartPlan) -> None:
    """Resume from the newest valid checkpoint, or start fresh or again, as `start` says;
    never replace a run silently (the plan refused that already)."""
    run_dir, main = session.run_dir, session.context.is_main
    if start.kind != "resume":
        if main:
            start.carry_out()
        if start.note:
            session.notes.append(start.note)
        return
    _refuse_changes_a_resume_cannot_carry(session)
    if session.sharded:
        if run_dir.checkpoint_files() and not run_dir.checkpoint_folders():
            raise sharded_ckpt.WorldSizeError(
                f"the checkpoints in {run_dir} (checkpoint-*.pt) were written by one unsharded "
                f"process and this run shards over {session.context.world_size}; resume with "
                "--nproc-per-node 1"
            )
        loaded = sharded_ckpt.load_latest(run_dir, session.compiled.recipe_hash, session.context)
    else:
        if not run_dir.checkpoint_files():
            sharded_ckpt.refuse_unsharded_resume(run_dir, session.context.world_size)
        loaded = ckpt.load_latest(run_dir, session.compiled.recipe_hash)
    assert loaded is not None  # the plan found checkpoints; unusable ones raised
    if main:
        start.carry_out()  # what writes the stop interrupted left
    restore(session, loaded)
    if start.note:
        session.notes.append(start.note)
    _note_resumed_changes(session, loaded.state["recipe"])
    if run_dir.dense_model.exists() and session.sharded:
        session.dense_state = fsdp.read_snapshot(run_dir.dense_model, session.model)
    elif run_dir.dense_model.exists():
        session.dense_state = ckpt.load_safetensors(run_dir.dense_model)


def _refuse_changes_a_resume_cannot_carry(session: TrainingSession) -> None:
    """A resume may change only the `RESUMABLE_KEYS`; say which other keys differ."""
    written = session.run_dir.recipe
    if not written.is_file():
        return
    try:
        before = load_recipe_text(written.read_text(encoding="utf-8", errors="replace"))
    except RecipeError:
        return  # not a recipe this tool wrote; the checkpoints' hashes decide
    fixed = [key for key, _, _ in recipe_changes(before, session.recipe) if not is_resumable(key)]
    if fixed:
        raise RunDirectoryError(
            f"cannot resume the run in {session.run_dir} with a different "
            f"{', '.join(fixed[:5])}{' (and more)' if len(fixed) > 5 else ''}: a resume may "
            f"change only {', '.join('.'.join(key) for key in RESUMABLE_KEYS)}; resume with the "
            "original recipe and --set values, or start a new run in another --out"
        )


def _note_resumed_changes(session: TrainingSession, written: str) -> None:
    before = load_recipe_text(written, "<checkpoint>")
    for key, old, new in recipe_changes(before, session.recipe):
        session.notes.append(f"from step {session.resumed_from}: {key} {old!r} -> {new!r}")


def _setup_sinks(session: TrainingSession, log_every: float) -> None:
    try:
        session.run_dir.path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingSetupError(
            f"cannot create the run directory {session.run_dir}: {error.strerror}; "
            "choose another --out"
        ) from None
    session.sinks = [
        TerminalSink(log_every=log_every),
        JsonlSink(session.run_dir.metrics, session.resumed_from),
    ]
    board = tensorboard_sink(session.run_dir.tensorboard)
    if board is not None:
        session.sinks.append(board)
    write_text_atomic(session.run_dir.recipe, session.resolved_recipe)


def _on_runtime_event(session: TrainingSession, event: RuntimeEvent) -> None:
    """The engine's events drive the FLOPs meter and the dense half of the pair."""
    if isinstance(event, MasksComputed):
        session.flops.set_densities({n: 1.0 - s for n, s in event.per_layer_sparsity.items()})
    elif isinstance(event, PhaseStarted) and event.kind == "dense":
        session.flops.set_densities({})
    elif isinstance(event, DenseSnapshot):
        capture_dense(session)
    session.emit(event)


def capture_dense(session: TrainingSession) -> None:
    """Keep the dense half of the pair: the weights at the end of the last dense phase, before
    the next forward pass moves the batch-norm statistics (the event comes before it). A
    sharded run keeps each rank's shards and gathers the dense model once, on rank 0, now."""
    if session.sharded:
        session.dense_state = fsdp.snapshot(session.model)
        full = fsdp.gather_on_rank0(session.model)
        if session.context.is_main:
            save_model(session, session.run_dir.dense_model, full)
        return
    state = session.model.state_dict()
    session.dense_state = {k: v.detach().cpu().clone() for k, v in state.items()}
    if session.context.is_main:
        save_model(session, session.run_dir.dense_model, session.dense_state)


def save_model(session: TrainingSession, path: Path, tensors: dict[str, torch.Tensor]) -> None:
    metadata = {"recipe": session.recipe.name, "recipe_hash": session.compiled.recipe_hash}
    ckpt.save_safetensors(path, tensors, metadata)
