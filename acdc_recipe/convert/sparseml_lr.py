"""SparseML's learning-rate modifiers as `train.optimizer.lr` and `train.lr_schedule`.

An acdc LR schedule is one shape after an optional linear warm-up: constant, step, multistep,
or cosine down to `final_lr` at the end of the run. The SparseML combinations that are such a
shape map to it:

- SetLearningRateModifier at the start: the lr, constant; later ones that each multiply the
  lr by the same factor: multistep.
- LearningRateFunctionModifier `cosine` (init_lr -> final_lr), alone or after a `linear` one
  that warms up: cosine (with warmup_epochs). A `linear` warm-up alone: constant after it.
- LearningRateModifier with lr_class MultiStepLR, StepLR or ExponentialLR: multistep or step.

Anything else has no equivalent: the conversion stops (a `ConversionError`) unless
`approximate` allows a constant learning rate at the source's peak instead. Each shape is
decided before anything about it is reported, so a modifier is reported once.
"""

from __future__ import annotations

from typing import Any

from acdc_recipe.convert.report import ConversionError, ConversionReport
from acdc_recipe.convert.sparseml_yaml import Fields, Modifier, Number

SET = "SetLearningRateModifier"
FUNCTION = "LearningRateFunctionModifier"
SCHEDULER = "LearningRateModifier"
LR_KINDS = (SET, FUNCTION, SCHEDULER)
Templates = list[tuple[tuple[str, ...], Number]]
Shape = tuple[dict[str, Any], Templates]
LR = ("train", "optimizer", "lr")
FINAL_LR = ("train", "lr_schedule", "final_lr")
SHAPES = "constant, step, multistep, or cosine to the run's end, after an optional linear warm-up"


def learning_rate(
    modifiers: list[tuple[Modifier, Fields]],
    total: int,
    report: ConversionReport,
    approximate: bool | None,
) -> Shape:
    """(the `optimizer`/`lr_schedule` part of `train`, the values that may stay templates).

    A schedule without an equivalent is a `ConversionError` when `approximate` is False, a
    constant at the source's peak when True, and only reported when None (no train section
    is written)."""
    if not modifiers:
        return {}, []
    ordered = sorted(modifiers, key=lambda item: _start(item[1]))
    sets = [item for item in ordered if item[0].kind == SET]
    others = [item for item in ordered if item[0].kind != SET]
    if not others:
        shape = _sets(sets, report)
    elif any(_start(fields) > 0 for _, fields in sets):
        shape = None
    else:
        shape = _shape(others, total, report)
        if shape is not None:
            for modifier, fields in sets:
                fields.number("learning_rate")
                report.map(modifier.where, "superseded by the init_lr of the modifier that follows")
    return shape if shape is not None else _no_equivalent(ordered, report, approximate)


def _shape(
    others: list[tuple[Modifier, Fields]], total: int, report: ConversionReport
) -> Shape | None:
    kinds = [(m.kind, _function(f) if m.kind == FUNCTION else None) for m, f in others]
    if kinds == [(FUNCTION, "cosine")]:
        return _cosine(others[0], None, total, report)
    if kinds == [(FUNCTION, "linear"), (FUNCTION, "cosine")]:
        return _cosine(others[1], others[0], total, report)
    if kinds == [(FUNCTION, "linear")]:
        return _warmup_only(others[0], report)
    if kinds == [(SCHEDULER, None)]:
        return _scheduler(others[0], report)
    return None


def _start(fields: Fields) -> float:
    return max(0.0, fields.number("start_epoch", -1).value)


def _unused_frequency(fields: Fields) -> None:
    """Read `update_frequency`, which these modifiers require to be -1 (unused)."""
    if "update_frequency" in fields:
        fields.number("update_frequency")


def _function(fields: Fields) -> str:
    _unused_frequency(fields)
    for key, default in (("cycle_epochs", -1.0), ("cycle_mul", 1.0), ("warmup", 0.0)):
        if key in fields and fields.number(key).value != default:
            return f"{fields.value('lr_func')} with {key}"
    return str(fields.value("lr_func"))


def _sets(sets: list[tuple[Modifier, Fields]], report: ConversionReport) -> Shape | None:
    rates = [fields.number("learning_rate", freeze=False) for _, fields in sets]
    starts = [_start(fields) for _, fields in sets]
    if starts[0] > 0:
        return None
    train: dict[str, Any] = {"optimizer": {"lr": rates[0].value}}
    if len(sets) > 1:
        gammas = [b.value / a.value for a, b in zip(rates, rates[1:]) if a.value]
        whole = all(s == int(s) for s in starts)
        if (
            len(gammas) != len(rates) - 1
            or not whole
            or max(gammas) - min(gammas) > 1e-12 * max(gammas)
        ):
            return None
        milestones = [int(s) for s in starts[1:]]
        train["lr_schedule"] = {"name": "multistep", "milestones": milestones, "gamma": gammas[0]}
    for modifier, _ in sets:
        report.map(modifier.where, "a learning rate from its start_epoch")
    return train, [(LR, rates[0])]


def _cosine(
    cosine: tuple[Modifier, Fields],
    warmup: tuple[Modifier, Fields] | None,
    total: int,
    report: ConversionReport,
) -> Shape | None:
    """SparseML's cosine (`final + (init - final) * (1 + cos(pi * x)) / 2`, x the progress
    from start_epoch to end_epoch, every step) is acdc's cosine when it ends with the run."""
    modifier, fields = cosine
    peak, final = fields.number("init_lr", freeze=False), fields.number("final_lr", freeze=False)
    start, end = _start(fields), fields.number("end_epoch").value
    if end != total:
        return None
    schedule: dict[str, Any] = {"name": "cosine", "final_lr": final.value}
    if warmup is not None:
        w_modifier, w_fields = warmup
        w_start, w_end = _start(w_fields), w_fields.number("end_epoch").value
        w_initial = w_fields.number("init_lr").value
        w_final = w_fields.number("final_lr").value
        if w_start > 0 or w_end != start or w_final != peak.value or w_final <= w_initial:
            return None
        schedule["warmup_epochs"] = w_end
        report.approximate(
            w_modifier.where,
            f"linear warm-up to {w_final:g} over {w_end:g} epochs -> warmup_epochs {w_end:g}: "
            f"acdc's warm-up rises from lr/steps (near 0), SparseML's from init_lr "
            f"{w_initial:g}, so acdc's lr is lower by at most {w_initial:g} at the first step, "
            "the gap closing linearly to 0 at the peak",
        )
    elif start > 0:
        return None
    report.map(modifier.where, f"cosine {peak.value:g} -> {final.value:g} to the run's end")
    train = {"optimizer": {"lr": peak.value}, "lr_schedule": schedule}
    return train, [(LR, peak), (FINAL_LR, final)]


def _warmup_only(warmup: tuple[Modifier, Fields], report: ConversionReport) -> Shape | None:
    modifier, fields = warmup
    initial, peak = fields.number("init_lr"), fields.number("final_lr", freeze=False)
    end = fields.number("end_epoch").value
    if _start(fields) > 0 or peak.value <= initial.value:
        return None
    report.approximate(
        modifier.where,
        f"linear warm-up to {peak.value:g} over {end:g} epochs, then constant -> warmup_epochs "
        f"{end:g}: acdc's warm-up starts near 0, SparseML's at {initial.value:g}",
    )
    train = {
        "optimizer": {"lr": peak.value},
        "lr_schedule": {"name": "constant", "warmup_epochs": end},
    }
    return train, [(LR, peak)]


def _scheduler(item: tuple[Modifier, Fields], report: ConversionReport) -> Shape | None:
    modifier, fields = item
    kind = fields.value("lr_class")
    arguments = fields.value("lr_kwargs", {})
    peak = fields.number("init_lr", freeze=False)
    fields.number("end_epoch", -1)
    _unused_frequency(fields)
    if _start(fields) > 0 or not isinstance(arguments, dict):
        return None
    known = {"MultiStepLR": {"milestones", "gamma"}, "StepLR": {"step_size", "gamma"},
             "ExponentialLR": {"gamma"}}  # fmt: skip
    if kind not in known or set(arguments) - known[kind]:
        return None
    gamma = _plain(arguments.get("gamma", 0.1))
    if kind == "MultiStepLR":
        milestones = [_plain(m) for m in arguments.get("milestones", [])]
        schedule = {"name": "multistep", "milestones": [int(m) for m in milestones]}
        if any(not isinstance(m, (int, float)) or m != int(m) for m in milestones):
            return None
        report.map(modifier.where, f"MultiStepLR at epochs {milestones}, gamma {gamma:g}")
    elif kind == "StepLR":
        step = _plain(arguments.get("step_size"))
        if not isinstance(step, (int, float)) or step != int(step) or step < 1:
            return None
        schedule = {"name": "step", "step_size": int(step)}
        report.map(modifier.where, f"StepLR every {step:g} epochs, gamma {gamma:g}")
    else:
        schedule = {"name": "step", "step_size": 1}
        report.approximate(
            modifier.where, f"ExponentialLR gamma {gamma:g} -> a x{gamma:g} step every epoch"
        )
    schedule["gamma"] = gamma
    return {"optimizer": {"lr": peak.value}, "lr_schedule": schedule}, [(LR, peak)]


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Number) else value


def _no_equivalent(
    items: list[tuple[Modifier, Fields]], report: ConversionReport, approximate: bool | None
) -> Shape:
    """The source's peak learning rate as a constant (when `approximate`), or the error."""
    rates = []
    for _, fields in items:
        for key in ("learning_rate", "init_lr", "final_lr"):
            if key in fields and isinstance(fields.value(key), Number):
                rates.append(fields.number(key).value)
        for key in fields.unread():  # read them all: the whole modifier is reported here
            fields.value(key)
    where = ", ".join(modifier.where for modifier, _ in items)
    peak = max(rates, default=None)
    if approximate is False:
        instead = f" at a constant {peak:g}, its peak," if peak is not None else ""
        raise ConversionError(
            f"{report.source}: the learning-rate schedule of {where} has no acdc equivalent "
            f"({SHAPES}); give --allow-approximate-lr to train{instead} instead, or leave "
            "--model out and set train.lr_schedule yourself"
        )
    for modifier, _ in items:
        report.lack(
            modifier.where, f"this learning-rate schedule has no acdc equivalent ({SHAPES})"
        )
    if peak is None or approximate is None:
        return {}, []
    report.approximate("", f"the learning rate is a constant {peak:g} (the source's peak) instead")
    return {"optimizer": {"lr": peak}}, []
