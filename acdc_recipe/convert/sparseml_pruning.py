"""SparseML's pruning modifiers as the mask computations SparseML makes, step by step.

Each pruning modifier is a `ScheduledUpdateModifier` (sparseml/pytorch/sparsification/
modifier.py): it updates when its start is pending (`epoch >= start_epoch`), every
`update_frequency` epochs after its last update (`epoch >= last + update_frequency`, -1 meaning
every step) and when its end is pending (`epoch >= end_epoch`); at each update
`BasePruningModifier.check_mask_update` chooses masks at `get_applied_sparsity_for_epoch(epoch)`
and, at the end, `pruning_end(leave_enabled)` keeps the masks or drops them. `simulate` runs
exactly that, at every step of the run (the epoch of a step is `epoch + batch / steps_per_epoch`).

- `ACDCPruningModifier` (modifier_pruning_acdc.py), from release 0.12 to the last one:
  phase k = (epoch - start_epoch) // update_frequency; dense (sparsity 0) iff k is even AND
  `end_epoch - update_frequency > epoch`, else `compression_sparsity`. So the last
  `update_frequency` epochs before `end_epoch` are always compressed, and the compression
  chosen at `end_epoch` is held to the end of training (`leave_enabled`, the default).
  In 0.11.x (`sparseml_version="0.11"`) `end_epoch` was first moved back over the trailing
  epochs whose `epoch // update_frequency` is odd (`_finish_on_compression`), and phase k was
  dense iff k is even.
- `GMPruningModifier` and its aliases: the sparsity SparseML interpolates (`inter_func`)
  between `init_sparsity` at `start_epoch` and `final_sparsity` at `end_epoch`.
- `ConstantPruningModifier`: holds the mask in force, which an acdc sparse phase does anyway.

Where pruning modifiers overlap, SparseML multiplies their masks; here one magnitude mask is
chosen at the largest sparsity in force.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from acdc_recipe.convert.report import ConversionError, ConversionReport, listed
from acdc_recipe.convert.schedule import MaskChange
from acdc_recipe.convert.sparseml_yaml import Fields, Modifier, Number

ACDC = "ACDCPruningModifier"
GRADUAL = {  # modifier -> its default for global_sparsity
    "GMPruningModifier": False,
    "MagnitudePruningModifier": False,
    "LegacyGMPruningModifier": False,
    "GlobalMagnitudePruningModifier": True,
}
CONSTANT = "ConstantPruningModifier"
INTERPOLATIONS = ("linear", "cubic", "inverse_cubic")
MAX_EPOCHS = 100_000  # far beyond any real run; bounds the work a hostile recipe can ask for
MAX_STEPS = 5_000_000  # steps of a run simulated step by step (seconds of work at most)
ALL_PRUNABLE = "__ALL_PRUNABLE__"
LEGACY_ACDC = "0.11"  # the release whose ACDC modifier moved end_epoch back


@dataclass(frozen=True)
class Pruner:
    """One pruning modifier as SparseML schedules it: its start, end and update frequency in
    epochs (-1: every step), the sparsity it chooses masks at for an epoch, and whether its
    last masks stay after its end (`hold`, SparseML's leave_enabled)."""

    where: str
    start: float
    end: float
    frequency: float
    sparsity_at: Callable[[float], float]
    hold: bool
    params: tuple[str, ...]  # as written, repeats dropped; SparseML treats them as a set
    scope: str
    pattern: str
    targets: tuple[Number, ...]  # the fields its sparsities come from

    def needs_steps(self) -> bool:
        """Whether it can update inside an epoch (a fractional epoch or every step)."""
        return self.frequency == -1 or any(v != int(v) for v in (self.start, self.end,
                                                                  self.frequency))  # fmt: skip


def is_pruning(modifier: Modifier) -> bool:
    """Whether the modifier chooses masks (ACDC or a gradual magnitude modifier)."""
    return modifier.kind == ACDC or modifier.kind in GRADUAL


def prunes_in_sparseml(kind: str) -> bool:
    """Whether a SparseML modifier class prunes (by its name: the pruning modifiers are named
    `...PruningModifier`; SparseGPTModifier prunes one shot)."""
    return "Pruning" in kind or kind == "SparseGPTModifier"


def pruner_of_modifier(
    modifier: Modifier, fields: Fields, report: ConversionReport, version: str
) -> Pruner:
    """The schedule of one pruning modifier, with a report line saying what it is."""
    if modifier.kind == ACDC:
        return _acdc(modifier, fields, report, version)
    return _gradual(modifier, fields, report)


def acdc_end_epoch(start: int, end: int, frequency: int) -> int:
    """SparseML 0.11's end_epoch for an ACDCPruningModifier (`_finish_on_compression`):
    trailing epochs e of [start, end) whose floor(e / frequency) is odd are dropped. The count
    ignores `start`, so the result depends on whether start is a multiple of 2 x frequency."""
    while end > start and ((end - 1) // frequency) % 2 == 1:
        end -= 1
    return end


def _acdc(modifier: Modifier, fields: Fields, report: ConversionReport, version: str) -> Pruner:
    start, end = fields.whole("start_epoch"), fields.whole("end_epoch")
    frequency = fields.whole("update_frequency")
    target = fields.sparsity("compression_sparsity")
    if start < 0 or frequency < 1 or end < start or end > MAX_EPOCHS:
        raise fields.fail(
            f"needs 0 <= start_epoch <= end_epoch <= {MAX_EPOCHS} and update_frequency >= 1 "
            f"(got start_epoch {start}, end_epoch {end}, update_frequency {frequency})"
        )
    hold = fields.flag("leave_enabled", True)
    after = "held to the end of training" if hold else "then dropped (leave_enabled: false)"
    if version == LEGACY_ACDC:
        stop = acdc_end_epoch(start, end, frequency)

        def sparsity_at(epoch: float) -> float:
            return target.value if ((epoch - start) // frequency) % 2 == 1 else 0.0

        moved = f"end_epoch {end} moved back to {stop}; " if stop != end else ""
        held = "sparse" if sparsity_at(stop) else "dense"
        report.map(
            modifier.where,
            f"SparseML 0.11: phases of {frequency} epochs from epoch {start}, dense first, "
            f"sparse at {target.value:g}; {moved}at epoch {stop} the phase it falls in "
            f"({held}) is applied and {after}",
        )
        return _pruner_of(fields, report, start, stop, frequency, sparsity_at, (target,))

    def sparsity_at(epoch: float) -> float:  # noqa: F811 - the rule of the release chosen
        if epoch == math.inf:
            return target.value
        dense = ((epoch - start) // frequency) % 2 == 0 and end - frequency > epoch
        return 0.0 if dense else target.value

    last = max(start, end - frequency)
    report.map(
        modifier.where,
        f"phases of {frequency} epochs from epoch {start}, dense first, sparse at "
        f"{target.value:g}; from epoch {last} on every update is sparse (SparseML keeps the "
        f"last {frequency} epochs before end_epoch {end} compressed), the mask chosen at epoch "
        f"{end} {after}",
    )
    return _pruner_of(fields, report, start, end, frequency, sparsity_at, (target,))


def interpolate(x: float, x0: float, x1: float, y0: float, y1: float, curve: str) -> float:
    """SparseML's interpolation of a pruning ramp (sparseml.utils.interpolate): the value at
    `x` between (x0, y0) and (x1, y1) on the named curve."""
    if x1 <= x0 or x >= x1:
        return y1
    progress = max(0.0, (x - x0) / (x1 - x0))
    shape = {
        "linear": progress,
        "cubic": 1 - (1 - progress) ** 3,
        "inverse_cubic": 1 - (1 - progress) ** (1 / 3),
    }[curve]
    if shape <= sys.float_info.epsilon:
        return y0
    if shape >= 1.0 - sys.float_info.epsilon:
        return y1
    return y0 + shape * (y1 - y0)


def _gradual(modifier: Modifier, fields: Fields, report: ConversionReport) -> Pruner:
    start = fields.number("start_epoch").value
    end = fields.number("end_epoch").value
    frequency = fields.number("update_frequency").value
    initial = fields.sparsity("init_sparsity", allow_zero=True)
    final = fields.sparsity("final_sparsity")
    curve = fields.choice("inter_func", "cubic", INTERPOLATIONS)
    if start < 0 or end < start or end > MAX_EPOCHS:
        raise fields.fail(
            f"needs 0 <= start_epoch <= end_epoch <= {MAX_EPOCHS} (got {start}, {end})"
        )
    if frequency != -1 and frequency <= 0:
        raise fields.fail(f"update_frequency must be positive or -1 (every step), got {frequency}")
    if fields.flag("phased", False):
        report.lack(modifier.where, "phased: true (pruning in phases) has no equivalent")
    if fields.value("score_type", "magnitude") != "magnitude":
        report.approximate(
            modifier.where, f"score_type {fields.value('score_type')!r}: acdc prunes by magnitude"
        )

    def sparsity_at(epoch: float) -> float:
        return interpolate(epoch, start, end, initial.value, final.value, curve)

    every = {-1: "every step", 1: "every epoch"}.get(frequency, f"every {frequency:g} epochs")
    hold = fields.flag("leave_enabled", True)
    report.map(
        modifier.where,
        f"{curve} ramp {initial.value:g} -> {final.value:g} from epoch {start:g} to {end:g}, "
        f"masks {every}" + (", then held to the end of training" if hold else ", then dropped"),
    )
    return _pruner_of(fields, report, start, end, frequency, sparsity_at, (initial, final))


def _pruner_of(
    fields: Fields,
    report: ConversionReport,
    start: float,
    end: float,
    frequency: float,
    sparsity_at: Callable[[float], float],
    targets: tuple[Number, ...],
) -> Pruner:
    """The `Pruner` of a modifier whose schedule is known: what it prunes, and how."""
    kind = fields.modifier.kind
    return Pruner(
        where=fields.modifier.where,
        start=start,
        end=end,
        frequency=frequency,
        sparsity_at=sparsity_at,
        hold=fields.flag("leave_enabled", True),
        params=_params(fields),
        scope=_scope(fields, default=kind == ACDC or GRADUAL.get(kind, False)),
        pattern=_pattern(fields, report),
        targets=targets,
    )


def _params(fields: Fields) -> tuple[str, ...]:
    """SparseML's `params` as the set it is (`get_named_layers_and_params_by_regex` prunes a
    parameter when any entry matches it, so order and repeats do not matter)."""
    value = fields.value("params")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise fields.fail("`params` must be a parameter name, a list of them, or __ALL_PRUNABLE__")
    if ALL_PRUNABLE in value and len(set(value)) > 1:
        raise fields.fail("`params` mixes __ALL_PRUNABLE__ with names; give one or the other")
    for name in value:
        if name.startswith("re:"):
            try:
                re.compile(name[3:])
            except re.error as error:
                raise fields.fail(f"`params` has an invalid regex {name!r}: {error}") from None
    return tuple(dict.fromkeys(value))


def _scope(fields: Fields, default: bool) -> str:
    return "global" if fields.flag("global_sparsity", default) else "uniform"


def _pattern(fields: Fields, report: ConversionReport) -> str:
    """SparseML's `mask_type` as a pattern (get_mask_creator_default: 'unstructured', 'block4'
    or a list [R, C] of block sides)."""
    mask = fields.value("mask_type", "unstructured")
    if isinstance(mask, list):
        mask = [m.value if isinstance(m, Number) else m for m in mask]
    if mask == "unstructured":
        return "unstructured"
    if mask == "block4":
        pattern, how = "block:1x4", "FourBlockMaskCreator: 4 input channels at one kernel position"
    elif (
        isinstance(mask, list)
        and len(mask) == 2
        and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mask)
        and mask[0] * mask[1] >= 2
    ):
        pattern = f"block:{mask[0]}x{mask[1]}"
        how = (
            "BlockMaskCreator: R*C consecutive weights of the [out, in] view at one kernel position"
        )
    else:
        shown = mask if isinstance(mask, str) else repr(mask)
        raise fields.fail(
            f"mask_type {shown} has no equivalent; SparseML knows 'unstructured', 'block4' and "
            "a list [R, C] of two whole block sides (at least 2 weights a block)"
        )
    report.approximate(
        fields.modifier.where,
        f"mask_type {mask} -> pattern {pattern}: the same blocks for Linear weights and 1x1 "
        f"convolutions; for larger kernels acdc tiles the [out, in*kh*kw] view, SparseML groups "
        f"by its {how}",
    )
    return pattern


def simulate(
    pruners: list[Pruner], epochs: int, steps_per_epoch: int, report: ConversionReport
) -> list[MaskChange]:
    """The masks the pruners choose or drop at each step of a run of `epochs` (positions in
    steps; in epochs when `steps_per_epoch` is 1), at the largest sparsity in force there."""
    states = [_State() for _ in pruners]
    changes: list[MaskChange] = []
    for position in range(epochs * steps_per_epoch):
        epoch = position // steps_per_epoch + (position % steps_per_epoch) / steps_per_epoch
        updated = [s.step(p, epoch) for p, s in zip(pruners, states)]
        if not any(updated):
            continue
        for pruner, state, did in zip(pruners, states, updated):
            if did and state.dropped and state.dropped[0] == epoch and state.dropped[1] > 0:
                _, chosen, before = state.dropped
                if chosen != before:
                    report.approximate(
                        pruner.where,
                        f"at its end (epoch {epoch:g}) SparseML zeroes the weights of a mask at "
                        f"{chosen:g} and then drops the masks; acdc drops them there, leaving "
                        f"the zeros of the mask before ({before:g})",
                    )
        held = [(s.mask, did) for s, did in zip(states, updated) if s.mask]
        target = max((m for m, _ in held), default=0.0)
        changes.append(MaskChange(position, target if target > 0 else None))
        if target > 0 and not any(did for m, did in held if m == target):
            report.approximate(
                "",
                f"at {'step' if steps_per_epoch > 1 else 'epoch'} {position} one modifier "
                f"changes its masks while another holds {target:g}; acdc chooses a new mask "
                "there at that sparsity",
            )
    late = sorted({_first_late(p, epochs) for p in pruners} - {None})
    if late:
        report.map("", f"mask changes at epochs {listed(late)} come after the run's last epoch")
    return changes


class _State:
    """A scheduled update modifier's own state: started, ended, last update, mask in force."""

    def __init__(self) -> None:
        self.started = self.ended = False
        self.last = -1.0
        self.mask: float | None = None
        self.dropped: tuple[float, float, float] | None = None  # (epoch, chosen, before)

    def step(self, pruner: Pruner, epoch: float) -> bool:
        """SparseML's update_ready / scheduled_update at `epoch`: whether masks changed."""
        start_pending = not self.started and not self.ended and epoch >= pruner.start
        end_pending = not self.ended and self.started and epoch >= pruner.end
        periodic = (
            self.started
            and epoch > pruner.start
            and not self.ended
            and (
                pruner.frequency == -1 or (self.last >= 0 and epoch >= self.last + pruner.frequency)
            )
        )
        if not (start_pending or end_pending or periodic):
            return False
        self.last = epoch
        before, self.mask = self.mask, pruner.sparsity_at(epoch)
        if end_pending and not pruner.hold:
            self.dropped = (epoch, self.mask or 0.0, before or 0.0)
            self.mask = None  # pruning_end(leave_enabled=False)
        self.started = True
        self.ended = self.ended or epoch >= pruner.end
        return True


def _first_late(pruner: Pruner, epochs: int) -> int | None:
    """The end of a pruner that ends after the run (its last mask change is never reached)."""
    return math.ceil(pruner.end) if pruner.end >= epochs else None


def constant(
    modifier: Modifier,
    fields: Fields,
    in_force_at: Callable[[float], bool],
    report: ConversionReport,
) -> None:
    """Report a ConstantPruningModifier: it adds nothing where a mask is in force at its
    start, and has no equivalent where none is (it keeps the zeros a model came with)."""
    fields.value("params")
    start = fields.number("start_epoch", -1).value
    fields.number("end_epoch", -1)
    if in_force_at(max(0.0, start)):
        report.map(
            modifier.where,
            "holds the masks in force, as an acdc sparse phase does until its next mask",
        )
    else:
        report.lack(
            modifier.where,
            "keeps the zeros a model already has (no mask is in force here); acdc chooses "
            "masks by magnitude, so start from a dense model or a pruning modifier",
        )


def check_steps(pruners: list[Pruner], steps_per_epoch: int | None, source: str) -> int:
    """The steps per epoch to simulate at: 1 (whole epochs) unless a pruner updates inside an
    epoch, which needs `steps_per_epoch` (SparseML's update steps depend on it)."""
    inside = [p for p in pruners if p.needs_steps()]
    if not inside:
        return 1
    if steps_per_epoch is None:
        first = inside[0]
        raise ConversionError(
            f"{source}: {first.where} updates masks inside epochs (start {first.start:g}, end "
            f"{first.end:g}, update_frequency {first.frequency:g}); which steps SparseML updates "
            "at depends on the steps per epoch: give --steps-per-epoch N (batches per epoch of "
            "your training) to convert it exactly, as a schedule in steps"
        )
    return steps_per_epoch
