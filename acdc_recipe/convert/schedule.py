"""From a source's mask changes, epoch by epoch, to an acdc schedule that lowers to exactly
that timeline.

Both source formats come down to a list of `MaskChange`s: at epoch e, masks are chosen by
magnitude at some sparsity, or dropped (dense training from e). One sparsity for every mask
gives the reference code's own form, `transitions` (`sparse_at`, `dense_at`); several give an
explicit `phases` list with a target per sparse phase. Either way each mask computation of the
source is the start of a sparse phase, since each sparse phase chooses its mask at its start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MaskChange:
    """At the start of `epoch` (a step, in a schedule in steps): masks chosen at `target`
    sparsity, or none (dense) if None."""

    epoch: int
    target: float | None


def schedule_section(
    changes: list[MaskChange], epochs: int, unit: str = "epoch"
) -> tuple[dict[str, Any], float | None]:
    """(the recipe's `schedule`, the `sparsity.target` it needs or None for a dense run).

    `changes` must have distinct positions inside [0, epochs), in `unit`s. A dense change while
    training is already dense is dropped (nothing happens there); every sparse change is kept.
    """
    kept, dense = [], True
    for change in sorted(changes, key=lambda c: c.epoch):
        if change.target is None and dense:
            continue
        kept.append(change)
        dense = change.target is None
    targets = [c.target for c in kept if c.target is not None]
    if not targets:
        return {"unit": unit, "phases": [{"dense": epochs}]}, None
    final = targets[-1]
    if len(set(targets)) == 1:
        transitions = {
            "epochs": epochs,
            "sparse_at": positions([c.epoch for c in kept if c.target is not None]),
            "dense_at": positions([c.epoch for c in kept if c.target is None]),
        }
        return {"unit": unit, "transitions": transitions}, final
    return {"unit": unit, "phases": _phases(kept, epochs, final)}, final


def _phases(kept: list[MaskChange], epochs: int, final: float) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    if kept[0].epoch > 0:
        phases.append({"dense": kept[0].epoch})
    ends = [c.epoch for c in kept[1:]] + [epochs]
    for change, end in zip(kept, ends):
        if change.target is None:
            phases.append({"dense": end - change.epoch})
        elif change.target == final:
            phases.append({"sparse": end - change.epoch})
        else:
            phases.append({"sparse": end - change.epoch, "target": change.target})
    return phases


def positions(values: list[int]) -> list[int] | str:
    """A list of epochs as the reference code writes them: runs of three or more evenly
    spaced epochs as `range(...)` (`"{{ range(10, 71, 10) | list + [85] }}"`), else the list."""
    parts: list[str] = []
    loose: list[int] = []
    index = 0
    while index < len(values):
        end = index + 1
        if end < len(values):
            step = values[end] - values[index]
            while end + 1 < len(values) and values[end + 1] - values[end] == step:
                end += 1
        if end - index >= 2:  # three or more values
            if loose:
                parts.append(str(loose))
                loose = []
            first, last, step = values[index], values[end], values[index + 1] - values[index]
            stride = f", {step}" if step != 1 else ""
            parts.append(f"range({first}, {last + 1}{stride}) | list")
            index = end + 1
        else:
            loose.append(values[index])
            index += 1
    if loose:
        parts.append(str(loose))
    if all(not part.startswith("range") for part in parts):
        return list(values)
    return "{{ " + " + ".join(parts) + " }}"
