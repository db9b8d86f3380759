"""Schedule lowering: every schedule form becomes one `Timeline` of contiguous phases.

The timeline is pure data. Everything the runtime does (which phase, which target, when to
recompute masks, when to snapshot the dense model) is a function of the position in it, so
resuming a run is restoring the step.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Any, Literal

from acdc_recipe.language.schema import (
    AcdcMacro,
    DensePhase,
    GradualPhase,
    PhaseItem,
    RepeatBlock,
    Schedule,
    SparsePhase,
    Transitions,
)

PhaseKind = Literal["dense", "sparse", "gradual"]
MAX_PHASES = 100_000  # far beyond any real schedule; bounds memory for hostile recipes
MAX_MASK_UPDATES = 100_000  # mask computations in one schedule; the plan holds each one's counts


class ScheduleError(ValueError):
    """A schedule that cannot be lowered; the message says what to change."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ("schedule",)) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Phase:
    """One phase, from `start` (inclusive) to `end` (exclusive), in the timeline's unit."""

    kind: PhaseKind
    start: int
    end: int
    target: float | None = None  # sparse/gradual: the (final) sparsity; None means sparsity.target
    initial: float = 0.0  # gradual: sparsity at the start of the ramp
    curve: Literal["cubic", "linear"] = "cubic"
    update: int = 1  # gradual: mask recomputed every `update` units

    @property
    def length(self) -> int:
        return self.end - self.start

    def sparsity_at(self, position: int, default_target: float) -> float:
        """Sparsity in force at `position` (0.0 in dense phases); gradual ramps move in steps."""
        if self.kind == "dense":
            return 0.0
        final = default_target if self.target is None else self.target
        if self.kind == "sparse":
            return final
        # Gradual: the value at the last mask update, reaching `final` at the last update.
        updates = -(-self.length // self.update) - 1
        if updates == 0:
            return final
        done = min((position - self.start) // self.update, updates)
        remaining = 1.0 - done / updates
        shape = remaining**3 if self.curve == "cubic" else remaining
        return final + (self.initial - final) * shape

    def mask_updates(self) -> range:
        """Positions at which this phase (re)computes masks; empty for dense phases."""
        if self.kind == "dense":
            return range(0)
        step = self.update if self.kind == "gradual" else self.length
        return range(self.start, self.end, step)


@dataclass(frozen=True)
class Timeline:
    """Contiguous phases covering [0, length) in `unit`s."""

    unit: Literal["epoch", "step"]
    phases: tuple[Phase, ...]

    @property
    def length(self) -> int:
        return self.phases[-1].end if self.phases else 0

    def phase_index_at(self, position: int) -> int:
        """Index of the phase holding `position`; positions past the end belong to the last."""
        starts = [p.start for p in self.phases]
        return max(0, min(bisect.bisect_right(starts, position) - 1, len(self.phases) - 1))

    def phase_at(self, position: int) -> Phase:
        return self.phases[self.phase_index_at(position)]

    def to_steps(self, steps_per_epoch: Any) -> Timeline:
        """The same timeline with every position in optimizer steps (the one place where
        epochs become steps). A step timeline is returned as it is; an epoch timeline needs a
        positive integer `steps_per_epoch` (numpy and torch integers too, not bool)."""
        if self.unit == "step":
            return self
        if not is_positive_int(steps_per_epoch):
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        k = int(steps_per_epoch)
        return Timeline(
            "step",
            tuple(
                Phase(p.kind, p.start * k, p.end * k, p.target, p.initial, p.curve, p.update * k)
                for p in self.phases
            ),
        )

    def compact(self) -> str:
        """'D0-9, S10-14, ..., S85-99': the phases as the paper writes them (ranges inclusive)."""
        return ", ".join(f"{p.kind[0].upper()}{p.start}-{p.end - 1}" for p in self.phases)

    @property
    def sparse_units(self) -> int:
        return sum(p.length for p in self.phases if p.kind != "dense")

    @property
    def last_dense(self) -> Phase | None:
        """The dense phase whose end state is the dense half of the sparse-dense pair."""
        dense = [p for p in self.phases if p.kind == "dense"]
        return dense[-1] if dense else None

    def warnings(self) -> list[str]:
        """Things that are legal but probably not what the author meant."""
        notes = []
        has_pruning = any(p.kind != "dense" for p in self.phases)
        if has_pruning and self.phases[-1].kind == "dense":
            notes.append(
                "the schedule ends with a dense phase, so the final model is not sparse; "
                "end with a sparse phase (e.g. final_sparse) to get the sparse half of the pair"
            )
        return notes


def is_positive_int(value: Any) -> bool:
    """An int (numpy and torch integers too, not bool) of at least 1."""
    try:
        return not isinstance(value, bool) and int(value) == value and int(value) >= 1
    except (TypeError, ValueError):
        return False


@functools.lru_cache(maxsize=64)
def lower(schedule: Schedule) -> Timeline:
    """Lower any schedule form to a `Timeline`; raise `ScheduleError` when it cannot.

    Schedules are frozen, so the result is cached: validation, the compiler and the CLI
    share one lowering of each schedule.
    """
    if schedule.acdc is not None:
        items = _acdc_items(schedule.acdc)
    elif schedule.transitions is not None:
        items = _transition_items(schedule.transitions)
    else:
        _check_phase_count(_count(schedule.phases or ()), ("schedule", "phases"))
        items = list(_flatten(schedule.phases or ()))
    timeline = Timeline(schedule.unit, _merge(_place(items)))
    updates = sum(len(phase.mask_updates()) for phase in timeline.phases)
    if updates > MAX_MASK_UPDATES:
        raise ScheduleError(
            f"the schedule computes masks {updates} times, more than the {MAX_MASK_UPDATES} "
            "allowed; give gradual phases a larger `update`"
        )
    return timeline


def _acdc_items(macro: AcdcMacro) -> list[tuple[PhaseKind, int]]:
    middle = macro.epochs - macro.warmup - macro.last_dense - macro.final_sparse
    period = macro.sparse + macro.dense
    blocks, rest = divmod(middle + macro.dense, period)
    if middle < macro.sparse or rest:
        fit = macro.warmup + macro.last_dense + macro.final_sparse + macro.sparse
        k = max(0, (macro.epochs - fit) // period)
        raise ScheduleError(
            f"the acdc macro cannot fill {macro.epochs} epochs: after warmup {macro.warmup}, "
            f"last_dense {macro.last_dense} and final_sparse {macro.final_sparse}, the "
            f"{middle} left must be sparse/dense blocks of {macro.sparse}/{macro.dense} that "
            f"start and end sparse; epochs that fit: {fit + k * period} or {fit + (k + 1) * period}",
            ("schedule", "acdc", "epochs"),
        )
    _check_phase_count(2 * blocks + 2, ("schedule", "acdc"))
    items: list[tuple[PhaseKind, int]] = [("dense", macro.warmup)]
    for block in range(blocks):
        items.append(("sparse", macro.sparse))
        if block < blocks - 1:
            items.append(("dense", macro.dense))
    items += [("dense", macro.last_dense), ("sparse", macro.final_sparse)]
    return [(kind, n) for kind, n in items if n > 0]


def _transition_items(spec: Transitions) -> list[tuple[PhaseKind, int]]:
    marks = sorted(
        [
            (pos, "sparse", ("schedule", "transitions", "sparse_at", i))
            for i, pos in enumerate(spec.sparse_at)
        ]
        + [
            (pos, "dense", ("schedule", "transitions", "dense_at", i))
            for i, pos in enumerate(spec.dense_at)
        ]
    )
    seen: dict[int, str] = {}
    for pos, kind, path in marks:
        if not 0 <= pos < spec.epochs:
            raise ScheduleError(f"switch position {pos} is outside [0, {spec.epochs})", path)
        if pos in seen:
            raise ScheduleError(f"position {pos} is both a sparse and a dense switch", path)
        seen[pos] = kind
    bounds = [(0, "dense")] + [(pos, kind) for pos, kind, _ in marks if pos > 0]
    if marks and marks[0][0] == 0:
        bounds[0] = (0, marks[0][1])
    ends = [pos for pos, _ in bounds[1:]] + [spec.epochs]
    return [(kind, end - start) for (start, kind), end in zip(bounds, ends)]  # type: ignore[misc]


def _check_phase_count(count: int, path: tuple[str | int, ...]) -> None:
    if count > MAX_PHASES:
        raise ScheduleError(
            f"the schedule expands to {count} phases, more than the {MAX_PHASES} allowed; "
            "check the lengths and repeat counts",
            path,
        )


def _count(items: tuple[PhaseItem, ...]) -> int:
    """How many phases `items` expand to, without expanding them."""
    return sum(
        item.repeat * _count(item.phases) if isinstance(item, RepeatBlock) else 1 for item in items
    )


def _flatten(items: tuple[PhaseItem, ...]):
    for item in items:
        if isinstance(item, RepeatBlock):
            for _ in range(item.repeat):
                yield from _flatten(item.phases)
        else:
            yield item


def _place(items: list) -> list[Phase]:
    phases, position = [], 0
    for item in items:
        if isinstance(item, tuple):
            kind, length = item
            phases.append(Phase(kind, position, position + length))
        elif isinstance(item, DensePhase):
            phases.append(Phase("dense", position, position + item.dense))
        elif isinstance(item, SparsePhase):
            phases.append(Phase("sparse", position, position + item.sparse, item.target))
        elif isinstance(item, GradualPhase):
            phases.append(
                Phase(
                    "gradual",
                    position,
                    position + item.gradual,
                    item.target,
                    item.initial,
                    item.curve,
                    item.update,
                )
            )
        position = phases[-1].end
    return phases


def _merge(phases: list[Phase]) -> tuple[Phase, ...]:
    """Join adjacent dense phases (they are one phase to the runtime); keep sparse ones apart,
    since each sparse phase re-chooses its mask."""
    merged: list[Phase] = []
    for phase in phases:
        if merged and phase.kind == "dense" and merged[-1].kind == "dense":
            merged[-1] = Phase("dense", merged[-1].start, phase.end)
        else:
            merged.append(phase)
    return tuple(merged)
