"""Typed runtime events: what the phase-state machine did, and at which optimizer step.

Listeners added with `SparsityRuntime.add_listener` receive these objects. They are small,
frozen and made of plain values, so they serialize to JSON (`event_to_dict`) and back
(`event_from_dict`) for the run's event log and the runtime's state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields


@dataclass(frozen=True)
class PhaseStarted:
    """A phase began at optimizer step `step` (its first step has not run yet)."""

    step: int
    phase_index: int
    kind: str  # "dense", "sparse" or "gradual"
    target: float  # overall sparsity in force from this step (0.0 for dense phases)


@dataclass(frozen=True)
class MasksComputed:
    """Masks were (re)computed from the current weights before step `step`.

    Per-layer values are keyed by `PrunableParam.name`. `changed_fraction` compares with the
    previous mask (None for the first mask of the run); `threshold` is the largest pruned
    magnitude when all prunable tensors share one unstructured selection, else None.
    `emptied_channels` counts, per layer that has any, the output channels (conv filters,
    Linear rows) left without a weight: such a channel outputs a constant, which a ReLU after it
    can silence for good (`sparsity.min_per_channel` keeps them).
    """

    step: int
    phase_index: int
    target: float
    achieved_sparsity: float
    per_layer_sparsity: dict[str, float]
    changed_fraction: float | None
    per_layer_changed: dict[str, float] | None
    threshold: float | None
    seconds: float
    emptied_channels: dict[str, int] | None = None  # None: logs written before it existed


@dataclass(frozen=True)
class DenseSnapshot:
    """The last dense phase ended: the weights now are the dense half of the sparse-dense pair.

    Emitted before step `step` runs and before any mask is applied, so a listener that saves
    the model's weights saves the dense model.
    """

    step: int
    phase_index: int  # index of the dense phase that just ended


@dataclass(frozen=True)
class LayersEmptied:
    """A mask computation before step `step` pruned every weight of these layers.

    Such a layer passes on only its bias, which can collapse training; global magnitude
    pruning empties small or low-magnitude layers first. The runtime also warns
    (`EmptiedLayerWarning`).
    """

    step: int
    phase_index: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class KernelsChosen:
    """Which kernels the masked layers run on, as chosen during step `step`.

    `kernels` maps every prunable weight to "sparse", "dense", "undecided" (its layer has not
    run a training step under this mask yet) or "none" (its layer type has no sparse kernel);
    `timings` holds, per timed layer, the milliseconds of one forward and backward on each path
    (`dense_ms`, `sparse_ms`). `mode` "on" chooses sparse wherever possible, without timing.
    """

    step: int
    phase_index: int
    mode: str
    kernels: dict[str, str]
    timings: dict[str, dict[str, float]]

    @property
    def speedup(self) -> float | None:
        """Dense time over the time of the chosen paths, summed over the timed layers."""
        if not self.timings:
            return None
        dense = sum(t["dense_ms"] for t in self.timings.values())
        chosen = sum(
            t["sparse_ms"] if self.kernels.get(name) == "sparse" else t["dense_ms"]
            for name, t in self.timings.items()
        )
        return dense / chosen if chosen > 0 else None


def kernels_note(event: KernelsChosen) -> str:
    """'3 of 4 layers sparse, measured 2.30x' (and what has no sparse kernel)."""
    kinds = list(event.kernels.values())
    with_kernel = [k for k in kinds if k != "none"]
    text = f"{kinds.count('sparse')} of {len(with_kernel)} layers sparse"
    speedup = event.speedup
    if speedup is not None:
        text += f", measured {speedup:.2f}x"
    elif event.mode == "on":
        text += " (sparse_kernels: on, not timed)"
    if undecided := kinds.count("undecided"):
        text += f", {undecided} not run yet"
    if without := len(kinds) - len(with_kernel):
        text += f"; {without} prunable weight{'s' if without > 1 else ''} without a sparse kernel"
    return text


class EmptiedLayerWarning(UserWarning):
    """A mask left a layer without any weight."""


class ScheduleEndedWarning(UserWarning):
    """A training step began after the last step of the recipe's schedule (warned once)."""


def emptied_layers_note(names: Sequence[str]) -> str:
    """What to tell a person about layers whose every weight is pruned."""
    return (
        f"every weight of {', '.join(names)} is pruned; such a layer passes on only its bias, "
        "which can collapse training (global magnitude pruning empties small or low-magnitude "
        "layers first); sparsity.scope: lamp (layer-adaptive scores), sparsity.min_density "
        "(a floor per layer) or sparsity.min_per_channel (a floor per output channel) prevent "
        "it, as do scope: erk or uniform"
    )


RuntimeEvent = PhaseStarted | MasksComputed | DenseSnapshot | LayersEmptied | KernelsChosen
EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (PhaseStarted, MasksComputed, DenseSnapshot, LayersEmptied, KernelsChosen)
}


def event_to_dict(event: RuntimeEvent) -> dict:
    """A plain dict with an `event` key naming the type (JSON and `weights_only` safe)."""
    return {"event": type(event).__name__, **asdict(event)}


def event_from_dict(data: dict) -> RuntimeEvent:
    """Inverse of `event_to_dict`; raises ValueError for an unknown event type."""
    name = data.get("event")
    if name not in EVENT_TYPES:
        raise ValueError(f"unknown runtime event {name!r}; expected one of {sorted(EVENT_TYPES)}")
    cls = EVENT_TYPES[name]
    values = {f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING}
    if cls is LayersEmptied:
        values["names"] = tuple(values["names"])
    return cls(**values)
