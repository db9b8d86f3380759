"""What `acdc run` records: typed events beside the engine's, and their JSON lines.

Every sink receives these objects (and the engine's `RuntimeEvent`s) in order; metrics.jsonl
holds one per line as `{"event": <class name>, **fields}`, which `record_from_dict` turns
back into the object. The vocabulary, against the loop that emits it:

    RunStarted                       once per process start (fresh or resumed)
    for each step:  PhaseStarted / MasksComputed / LayersEmptied / DenseSnapshot  (engine)
                    CheckpointWritten (every train.checkpoint_every_steps)
    for each epoch: EpochEnded, CheckpointWritten
    Note                             anything a person should know (a refused checkpoint, ...)
    RunInterrupted | RunDiverged     when the run stops early
    RunFinished                      with the summary
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from acdc_recipe.errors import UserError
from acdc_recipe.runtime.events import EVENT_TYPES, RuntimeEvent, event_from_dict


@dataclass(frozen=True)
class RunStarted:
    """The run (re)started at `step`; `phases` in steps, `layers` the prunable weights."""

    step: int
    recipe: str
    epochs: int
    steps_per_epoch: int
    total_steps: int
    device: str
    world_size: int
    threads: int
    resumed_from: int | None
    phases: list[dict[str, Any]]  # kind, start, end (steps)
    layers: list[dict[str, Any]]  # name, op, shape


@dataclass(frozen=True)
class EpochEnded:
    """Epoch `epoch` (0-based, as the schedule counts) finished and was evaluated."""

    step: int
    epoch: int
    phase: str
    train_loss: float
    val_loss: float
    top1: float
    sparsity: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class CheckpointWritten:
    step: int
    path: str


@dataclass(frozen=True)
class Note:
    """Something a person should know about the run, in one sentence."""

    step: int
    text: str


@dataclass(frozen=True)
class RunInterrupted:
    """Ctrl-C or SIGTERM stopped the run at a step boundary, after checkpointing it."""

    step: int
    checkpoint: str | None


@dataclass(frozen=True)
class RunDiverged:
    """The loss of step `step` was not finite (or, with `loss` None, the weights were not, at
    a checkpoint); training stopped there."""

    step: int
    loss: float | None
    checkpoint: str | None  # the newest checkpoint, all finite


@dataclass(frozen=True)
class RunFinished:
    step: int
    summary: dict[str, Any]


RunRecord = RunStarted | EpochEnded | CheckpointWritten | Note | RunInterrupted | RunDiverged
Record = RunRecord | RunFinished | RuntimeEvent
RUN_RECORD_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        RunStarted,
        EpochEnded,
        CheckpointWritten,
        Note,
        RunInterrupted,
        RunDiverged,
        RunFinished,
    )
}


class RecordError(UserError, ValueError):
    """A metrics.jsonl line that names a known event but does not hold its fields."""


def record_to_dict(record: Record) -> dict[str, Any]:
    """`{"event": <class name>, **fields}`: JSON-ready."""
    return {"event": type(record).__name__, **asdict(record)}


def record_from_dict(data: dict[str, Any]) -> Record:
    """The record a `record_to_dict` line holds; raises `RecordError` when it is malformed."""
    name = data.get("event")
    try:
        if name in EVENT_TYPES:
            return event_from_dict(data)
        cls = RUN_RECORD_TYPES[name]
        return cls(**{f.name: data[f.name] for f in fields(cls)})
    except (KeyError, TypeError) as error:
        raise RecordError(f"the {name} record lacks {error}") from None


def read_records(path: Path) -> list[Record]:
    """The records of a metrics.jsonl, in order. A torn last line (a crash mid-write) and lines
    that are not event records of this version are skipped; a known event with missing
    fields raises `RecordError` naming the line."""
    records: list[Record] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or data.get("event") not in (
            *EVENT_TYPES,
            *RUN_RECORD_TYPES,
        ):
            continue
        try:
            records.append(record_from_dict(data))
        except RecordError as error:
            raise RecordError(f"{path}, line {number}: {error}") from None
    return records


def records_until_checkpoint(records: list[Record], step: int) -> list[Record]:
    """The records up to the `CheckpointWritten` of `step` (those before `step` when that
    record is missing): what a run resumed from that checkpoint keeps of its log."""
    marks = [
        i for i, r in enumerate(records) if isinstance(r, CheckpointWritten) and r.step == step
    ]
    if marks:
        return records[: marks[-1] + 1]
    return [r for r in records if r.step < step]
