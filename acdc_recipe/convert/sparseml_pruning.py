"""SparseML's pruning modifiers as mask computations, epoch by epoch, as SparseML runs them.

- `ACDCPruningModifier`: phases of `update_frequency` epochs alternate from `start_epoch`,
  starting dense (phase k = (epoch - start_epoch) // update_frequency is sparse when k is odd),
  masks chosen at each phase start. SparseML first moves `end_epoch` back over the trailing
  epochs whose `epoch // update_frequency` is odd (its `_finish_on_compression`, meant to end
  on a sparse phase), then at that epoch applies the phase it falls in one last time and, with
  `leave_enabled` (the default), holds it to the end of training.
- `GMPruningModifier` and its aliases: masks at `start_epoch`, every `update_frequency` epochs
  and at `end_epoch`, at the sparsity SparseML interpolates (`inter_func`), held afterwards.
- `ConstantPruningModifier`: holds the mask in force, which an acdc sparse phase does anyway.

Where pruning modifiers overlap, SparseML multiplies their masks; here one magnitude mask is
chosen at the largest sparsity in force.
"""

from __future__ import annotations

import bisect
import math
import re
import sys
from dataclasses import dataclass

from acdc_recipe.convert.report import ConversionReport, listed
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
ALL_PRUNABLE = "__ALL_PRUNABLE__"


@dataclass(frozen=True)
class Pruner:
    """One pruning modifier as mask computations: `updates` are (epoch, sparsity) in order;
    from `end` on its last sparsity stays in force when `hold`, else its mask is dropped."""

    where: str
    updates: tuple[tuple[int, float], ...]
    end: int
    hold: bool
    params: tuple[str, ...]
    scope: str
    pattern: str
    targets: tuple[Number, ...]  # the fields its sparsities come from

    def in_force(self, epoch: int) -> float:
        """The sparsity of its masks during `epoch` (0.0 before its first and after a drop)."""
        index = bisect.bisect_right(self.updates, (epoch, math.inf))
        if index == 0 or (epoch >= self.end and not self.hold):
            return 0.0
        return self.updates[index - 1][1]


def is_pruning(modifier: Modifier) -> bool:
    """Whether the modifier chooses masks (ACDC or a gradual magnitude modifier)."""
    return modifier.kind == ACDC or modifier.kind in GRADUAL


def pruner_of_modifier(modifier: Modifier, fields: Fields, report: ConversionReport) -> Pruner:
    """The mask computations of one pruning modifier, with a report line saying what they are."""
    if modifier.kind == ACDC:
        return _acdc(modifier, fields, report)
    return _gradual(modifier, fields, report)


def acdc_end_epoch(start: int, end: int, frequency: int) -> int:
    """SparseML's end_epoch for an ACDCPruningModifier: trailing epochs e (from `end`
    backwards, down to `start`) whose floor(e / frequency) is odd are dropped. The count
    ignores `start`, so the result depends on whether start is a multiple of 2 x frequency."""
    while end > start and ((end - 1) // frequency) % 2 == 1:
        end -= 1
    return end


def _acdc(modifier: Modifier, fields: Fields, report: ConversionReport) -> Pruner:
    start, end = fields.whole("start_epoch"), fields.whole("end_epoch")
    frequency = fields.whole("update_frequency")
    target = fields.sparsity("compression_sparsity")
    if start < 0 or frequency < 1 or end < start or end > MAX_EPOCHS:
        raise fields.fail(
            f"needs 0 <= start_epoch <= end_epoch <= {MAX_EPOCHS} and update_frequency >= 1 "
            f"(got start_epoch {start}, end_epoch {end}, update_frequency {frequency})"
        )
    stop = acdc_end_epoch(start, end, frequency)

    def sparsity_at(epoch: int) -> float:
        return target.value if ((epoch - start) // frequency) % 2 == 1 else 0.0

    updates = [(e, sparsity_at(e)) for e in range(start, stop, frequency)] + [
        (stop, sparsity_at(stop))
    ]
    hold = fields.flag("leave_enabled", True)
    held = "sparse" if sparsity_at(stop) else "dense"
    moved = f"SparseML moves end_epoch {end} to {stop}; " if stop != end else ""
    report.map(
        modifier.where,
        f"phases of {frequency} epochs from epoch {start}, dense first, sparse at "
        f"{target.value:g}; {moved}at epoch {stop} the phase it falls in ({held}) is applied "
        + ("and held to the end of training" if hold else "and then the masks are dropped"),
    )
    return _pruner_of(fields, report, updates, stop, (target,))


def _interpolate(x: float, x0: float, x1: float, y0: float, y1: float, curve: str) -> float:
    """SparseML's interpolation of a pruning ramp (the value at `x` between (x0, y0) and
    (x1, y1) on the named curve)."""
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
    if frequency == -1:
        report.approximate(modifier.where, "update_frequency -1 (every step) becomes every epoch")
        frequency = 1
    if frequency <= 0:
        raise fields.fail(f"update_frequency must be positive, got {frequency}")
    if fields.flag("phased", False):
        report.lack(modifier.where, "phased: true (pruning in phases) has no equivalent")
    if fields.value("score_type", "magnitude") != "magnitude":
        report.approximate(
            modifier.where, f"score_type {fields.value('score_type')!r}: acdc prunes by magnitude"
        )
    points, at = [], float(start)
    while at < end and len(points) < MAX_EPOCHS:
        points.append(at)
        at = start + len(points) * frequency
    points.append(float(end))
    updates: dict[int, float] = {}
    for point in points:
        value = _interpolate(point, start, end, initial.value, final.value, curve)
        updates[math.floor(point + 0.5)] = value
    if any(p != int(p) for p in points):
        report.approximate(
            modifier.where,
            f"{len(points)} mask updates at fractional epochs become {len(updates)} at the "
            "nearest whole epoch (acdc schedules in whole epochs)",
        )
    hold = fields.flag("leave_enabled", True)
    report.map(
        modifier.where,
        f"{curve} ramp {initial.value:g} -> {final.value:g}, masks at epochs "
        f"{listed(sorted(updates))}"
        + (", then held to the end of training" if hold else ", then dropped"),
    )
    return _pruner_of(
        fields, report, sorted(updates.items()), math.floor(end + 0.5), (initial, final)
    )


def _pruner_of(
    fields: Fields,
    report: ConversionReport,
    updates: list[tuple[int, float]],
    end: int,
    targets: tuple[Number, ...],
) -> Pruner:
    """The `Pruner` of a modifier whose mask updates are known: what it prunes, and how."""
    kind = fields.modifier.kind
    return Pruner(
        fields.modifier.where,
        tuple(updates),
        end,
        fields.flag("leave_enabled", True),
        _params(fields),
        _scope(fields, default=kind == ACDC or GRADUAL.get(kind, False)),
        _pattern(fields, report),
        targets,
    )


def _params(fields: Fields) -> tuple[str, ...]:
    value = fields.value("params")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise fields.fail("`params` must be a parameter name, a list of them, or __ALL_PRUNABLE__")
    if ALL_PRUNABLE in value and len(value) > 1:
        raise fields.fail("`params` mixes __ALL_PRUNABLE__ with names; give one or the other")
    for name in value:
        if name.startswith("re:"):
            try:
                re.compile(name[3:])
            except re.error as error:
                raise fields.fail(f"`params` has an invalid regex {name!r}: {error}") from None
    return tuple(value)


def _scope(fields: Fields, default: bool) -> str:
    return "global" if fields.flag("global_sparsity", default) else "uniform"


def _pattern(fields: Fields, report: ConversionReport) -> str:
    mask = fields.value("mask_type", "unstructured")
    if mask == "unstructured":
        return "unstructured"
    if mask == "block4" or mask == [1, 4]:
        pattern = "block:1x4"
    elif isinstance(mask, list) and len(mask) == 2 and all(isinstance(m, int) for m in mask):
        pattern = f"block:{mask[0]}x{mask[1]}"
    elif isinstance(mask, str) and mask.count(":") == 1:
        return mask  # N:M
    else:
        raise fields.fail(f"mask_type {mask!r} has no equivalent (unstructured, block4, [R, C])")
    report.approximate(
        fields.modifier.where,
        f"mask_type {mask!r} -> pattern {pattern}: acdc prunes whole blocks of the weight "
        "matrix; SparseML groups convolution weights over its own 2-D view",
    )
    return pattern


def constant(
    modifier: Modifier, fields: Fields, pruners: list[Pruner], report: ConversionReport
) -> None:
    """Report a ConstantPruningModifier: it adds nothing where a mask is in force at its
    start, and has no equivalent where none is (it keeps the zeros a model came with)."""
    fields.value("params")
    start = fields.number("start_epoch", -1).value
    fields.number("end_epoch", -1)
    at = max(0, math.floor(start + 0.5))
    if any(p.in_force(at) > 0 for p in pruners):
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


def mask_changes(pruners: list[Pruner], total: int, report: ConversionReport) -> list[MaskChange]:
    """The masks the pruners choose or drop at each epoch of the run, at the largest sparsity
    in force there."""
    updated = {at for p in pruners for at, _ in p.updates}
    released = {p.end for p in pruners if not p.hold}
    changes = []
    for epoch in sorted(updated | released):
        if epoch >= total:
            continue
        target = max(p.in_force(epoch) for p in pruners)
        changes.append(MaskChange(epoch, target if target > 0 else None))
        if epoch not in updated and target > 0:
            report.approximate(
                "",
                f"at epoch {epoch} one modifier drops its masks while another holds {target:g}; "
                "acdc chooses a new mask there at that sparsity",
            )
    late = sorted(e for e in updated | released if e >= total)
    if late:
        report.map(
            "",
            f"mask changes at epochs {listed(late)} come after the run's last epoch, {total - 1}",
        )
    return changes
