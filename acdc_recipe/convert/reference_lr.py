"""The reference code's learning-rate schedulers as `train.lr_schedule`.

`TrainingPolicy` (policies/trainers.py) builds the scheduler, which steps once on being built,
and steps it again at the end of each epoch `start, start + freq, ... <= end` of its `epochs`;
the lr of epoch e is the scheduler's value after the n(e) steps made before e (plus that
first one). The lr changes only between epochs.

- ExponentialLR, StepLR, MultiStepLR: multistep milestones at the epochs where the lr falls,
  exact.
- CosineLR (optimization/lr_schedulers.py): `base * (n + 1) / warmup_length` while n is in the
  warm-up, then `base * (1 + cos(pi * (n - w) / (end_epoch - w))) / 2`. acdc's cosine follows
  the same curve step by step, ending with the run: when the reference's curve also ends with
  the run (stepped every epoch from 0, end_epoch = the run's length) the two differ only by
  per-epoch against per-step values, and the report gives the largest gap. Otherwise the curve
  has no equivalent.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from acdc_recipe.convert.report import ConversionError, ConversionReport, listed

WHERE = "trainers.default_trainer.lr_scheduler"
DECAYS = ("ExponentialLR", "StepLR", "MultiStepLR")
SAMPLES = 32  # points per epoch at which acdc's per-step lr is compared with the reference's


def lr_schedule(
    config: Any, epochs: int, report: ConversionReport, approximate: bool | None
) -> dict[str, Any]:
    """The `lr_schedule` for the reference trainer's `lr_scheduler` (see the module docstring).

    A scheduler without an equivalent is a `ConversionError` when `approximate` is False,
    converted as closely as acdc can when True, and only reported when None (no train
    section is written)."""
    if not isinstance(config, dict):
        return {}
    kind = config.get("class")
    steps = config.get("epochs")
    if not (isinstance(steps, list) and len(steps) == 3 and all(_is_whole(v) for v in steps)
            and steps[1] >= 1):  # fmt: skip
        raise ConversionError(f"{report.source}: `{WHERE}.epochs` must be [start, freq, end]")
    stepped = list(range(steps[0], min(steps[2], epochs - 1) + 1, steps[1]))
    if kind in DECAYS:
        return _decay(config, kind, stepped, epochs, report)
    if kind == "CosineLR":
        return _cosine(config, steps, stepped, epochs, report, approximate)
    _no_equivalent(f"class {kind} has no equivalent", report, approximate,
                   "the lr stays the optimizer's lr (its peak)")  # fmt: skip
    return {}


def _decay(
    config: dict[str, Any], kind: str, stepped: list[int], epochs: int, report: ConversionReport
) -> dict[str, Any]:
    """A torch scheduler stepped at the end of some epochs, as multistep milestones: the lr of
    epoch y is the base lr times gamma to the power its scheduler reached in y's steps."""
    gamma = config.get("gamma", 0.1)
    step_size = config.get("step_size", 1)
    marks = config.get("milestones", [])
    if (
        not _is_number(gamma)
        or not (_is_whole(step_size) and step_size >= 1)
        or not (isinstance(marks, list) and all(_is_whole(m) for m in marks))
    ):
        raise ConversionError(
            f"{report.source}: `{WHERE}` needs a numeric gamma, a whole step_size >= 1 and "
            "whole milestones"
        )

    def power(calls: int) -> int:
        if kind == "ExponentialLR":
            return calls
        if kind == "StepLR":
            return calls // step_size
        return sum(1 for m in marks if calls >= m)

    milestones, previous = [], 0
    for epoch in range(1, epochs):
        now = power(bisect.bisect_left(stepped, epoch))  # the steps made before `epoch`
        milestones += [epoch] * (now - previous)
        previous = now
    report.map(
        WHERE,
        f"{kind} (gamma {gamma}) stepped after epochs {listed(stepped)} -> multistep, the lr "
        f"falls from the next epoch: milestones {listed(milestones)}",
    )
    return {"name": "multistep", "milestones": milestones, "gamma": gamma}


def _cosine(
    config: dict[str, Any],
    steps: list[int],
    stepped: list[int],
    epochs: int,
    report: ConversionReport,
    approximate: bool | None,
) -> dict[str, Any]:
    warmup, end = config.get("warmup_length", 0), config.get("end_epoch")
    if not (_is_whole(warmup) and warmup >= 0 and _is_whole(end) and end > warmup):
        raise ConversionError(
            f"{report.source}: `{WHERE}` (CosineLR) needs whole warmup_length >= 0 and "
            f"end_epoch > warmup_length, got {warmup!r} and {end!r}"
        )

    def reference(epoch: int) -> float:
        n = bisect.bisect_left(stepped, epoch)  # steps before `epoch`, after the first one
        if n < warmup:
            return (n + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (n - warmup) / (end - warmup)))

    gap, at = cosine_gap(reference, warmup, epochs)
    described = (
        f"CosineLR (warm-up {warmup}, end_epoch {end}, stepped after epochs {listed(stepped)})"
    )
    gap_text = f"at most {gap:.1%} of the peak apart (epoch {at})"
    schedule = {"name": "cosine", "warmup_epochs": warmup, "final_lr": 0.0}
    if steps[0] == 0 and steps[1] == 1 and steps[2] >= epochs - 2 and end == epochs:
        report.approximate(
            WHERE,
            f"{described} -> cosine with warmup_epochs {warmup}: the same curve, set once per "
            f"epoch by the reference and every step by acdc, {gap_text}",
        )
        return schedule
    _no_equivalent(
        f"{described} does not end with the {epochs}-epoch run, and acdc's cosine does",
        report,
        approximate,
        "acdc's cosine ending with the run is used, " + gap_text,
    )
    return schedule


def cosine_gap(reference: Any, warmup: int, epochs: int) -> tuple[float, int]:
    """The largest gap, as a fraction of the peak, between the reference's per-epoch factor
    `reference(e)` and acdc's per-step cosine with `warmup` epochs over `epochs` (its bound
    as the steps per epoch grow), and the epoch where it is largest."""
    worst, where = 0.0, 0
    for epoch in range(epochs):
        for k in range(SAMPLES):
            x = epoch + k / SAMPLES  # where a step starts
            if x < warmup:
                ours = x / warmup
            else:
                ours = 0.5 * (1 + math.cos(math.pi * min(1.0, (x - warmup) / (epochs - warmup))))
            if abs(ours - reference(epoch)) > worst + 1e-12:
                worst, where = abs(ours - reference(epoch)), epoch
    return worst, where


def _no_equivalent(
    what: str, report: ConversionReport, approximate: bool | None, instead: str
) -> None:
    if approximate is False:
        raise ConversionError(
            f"{report.source}: `{WHERE}`: {what}; give --allow-approximate-lr to convert it "
            f"anyway ({instead}), or leave --model out and set train.lr_schedule yourself"
        )
    if approximate:
        report.approximate(WHERE, f"{what}: {instead}")
    else:
        report.lack(WHERE, what)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
