"""What a checkpoint holds, in one list that both saving and restoring read.

A run resumed from any checkpoint ends bitwise equal to an uninterrupted one (same recipe,
machine and thread count): shuffling and augmentation are pure functions of (seed, epoch,
batch), and everything else that moves is here. A resume may change the `RESUMABLE_KEYS`
(the learning rate, its schedule, clipping, ...); the changes are recorded as a note.
A sharded (FSDP2) run saves the same parts into a checkpoint folder: the DTensors in them
through torch.distributed.checkpoint, the rest per rank (`sharded_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from acdc_recipe.formats import checkpoint as ckpt
from acdc_recipe.formats.records import CheckpointWritten
from acdc_recipe.language.schema import Recipe
from acdc_recipe.trainer import sharded_checkpoint as sharded_ckpt
from acdc_recipe.trainer.session import TrainingSession


@dataclass(frozen=True)
class Part:
    """One entry of a checkpoint: how to read it from a session and how to put it back."""

    key: str
    save: Callable[[TrainingSession], Any]
    restore: Callable[[TrainingSession, Any], None]


def _check_world_size(session: TrainingSession, saved: int) -> None:
    if saved != session.context.world_size:
        raise ckpt.CheckpointError(
            f"the checkpoint was written by {saved} processes and this run has "
            f"{session.context.world_size}; resume with --nproc-per-node {saved}"
        )


def _note_thread_change(session: TrainingSession, saved: int) -> None:
    threads = torch.get_num_threads()
    if saved != threads:
        session.notes.append(
            f"resumed with {threads} torch threads where the run used {saved}: results can "
            "differ from an uninterrupted run in the last bits (set --threads to match)"
        )


CHECKPOINT_CONTENTS: tuple[Part, ...] = (
    Part("world_size", lambda s: s.context.world_size, _check_world_size),
    Part("model", lambda s: s.model.state_dict(), lambda s, v: s.model.load_state_dict(v)),
    Part(
        "optimizer",
        lambda s: s.optimizer.state_dict(),
        lambda s, v: s.optimizer.load_state_dict(v),
    ),
    Part(
        "lr_schedule",
        lambda s: s.lr_schedule.state_dict(),
        lambda s, v: s.lr_schedule.load_state_dict(v),
    ),
    Part("runtime", lambda s: s.runtime.state_dict(), lambda s, v: s.runtime.load_state_dict(v)),
    Part("flops", lambda s: s.flops.state_dict(), lambda s, v: s.flops.load_state_dict(v)),
    Part("progress", lambda s: s.progress.state_dict(), lambda s, v: s.progress.load_state_dict(v)),
    Part("rng", lambda s: ckpt.rng_state(), lambda s, v: ckpt.restore_rng_state(v)),
    Part("threads", lambda s: torch.get_num_threads(), _note_thread_change),
    Part("recipe", lambda s: s.resolved_recipe, lambda s, v: None),  # read by `setup`
)


def write_checkpoint(session: TrainingSession) -> str | None:
    """Write the checkpoint for the current step (rank 0 alone, or every rank of a sharded
    run); its file or folder name, or None on the ranks that wrote nothing."""
    step, recipe_hash = session.runtime.step, session.compiled.recipe_hash
    if not (session.context.is_main or session.sharded):
        return None
    state = {part.key: part.save(session) for part in CHECKPOINT_CONTENTS}
    if session.sharded:
        path = sharded_ckpt.save_checkpoint(
            session.run_dir, step, state, recipe_hash, session.context
        )
    else:
        path = ckpt.save_checkpoint(session.run_dir, step, state, recipe_hash)
    session.last_checkpoint = path.name
    session.emit(CheckpointWritten(step, path.name))
    return path.name


def restore(
    session: TrainingSession, loaded: ckpt.LoadedCheckpoint | sharded_ckpt.ShardedCheckpoint
) -> None:
    """Put every part of a checkpoint back, then apply this recipe's learning rate."""
    state = loaded.state
    if isinstance(loaded, sharded_ckpt.ShardedCheckpoint):
        templates = {part.key: part.save(session) for part in CHECKPOINT_CONTENTS}
        state = sharded_ckpt.load_state(loaded, templates)
    for part in CHECKPOINT_CONTENTS:
        part.restore(session, state[part.key])
    apply_learning_rate(session)
    session.resumed_from = int(loaded.state["step"])
    session.last_checkpoint = loaded.path.name
    session.notes.extend(loaded.refused)


def recipe_changes(old: Recipe, new: Recipe) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two recipes."""
    changes: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in dict.fromkeys([*a, *b]):
                walk(a.get(key), b.get(key), (*path, str(key)))
        elif a != b:
            changes.append((".".join(path), a, b))

    walk(old.model_dump(mode="json"), new.model_dump(mode="json"), ())
    return changes


def apply_learning_rate(session: TrainingSession) -> None:
    """Set every group's lr from this recipe's peak lr and LR schedule at the restored step
    (the optimizer's state dict brings back the lr of the run that wrote it). With an
    unchanged recipe this is the value `LambdaLR` computed itself, to the bit."""
    schedule, peak = session.lr_schedule, session.spec.optimizer.lr
    schedule.base_lrs = [peak] * len(session.optimizer.param_groups)
    lrs = [
        base * factor(schedule.last_epoch)
        for base, factor in zip(schedule.base_lrs, schedule.lr_lambdas, strict=True)
    ]
    for group, lr in zip(session.optimizer.param_groups, lrs, strict=True):
        group["initial_lr"], group["lr"] = peak, lr
    schedule._last_lr = lrs
