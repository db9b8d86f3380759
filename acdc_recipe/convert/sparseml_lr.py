"""SparseML's learning-rate modifiers as `train.optimizer.lr` and `train.lr_schedule`.

An acdc LR schedule is one shape after an optional linear warm-up: constant, step, multistep,
or cosine down to `final_lr` at the end of the run. The SparseML combinations that are such a
shape map to it:

- SetLearningRateModifier at the start: the lr, constant; later ones that each multiply the
  lr by the same factor: multistep.
- LearningRateFunctionModifier `cosine` (init_lr -> final_lr), alone or after a `linear` one
  that warms up: cosine (with warmup_epochs). A `linear` warm-up alone: constant after it.
- LearningRateModifier with lr_class MultiStepLR, StepLR or ExponentialLR: multistep or step.

Anything else is reported as having no equivalent, and the first learning rate is kept.
"""

from __future__ import annotations

from typing import Any

from acdc_recipe.convert.report import ConversionReport
from acdc_recipe.convert.sparseml_yaml import Fields, Modifier, Number

SET = "SetLearningRateModifier"
FUNCTION = "LearningRateFunctionModifier"
SCHEDULER = "LearningRateModifier"
LR_KINDS = (SET, FUNCTION, SCHEDULER)
Templates = list[tuple[tuple[str, ...], Number]]
LR = ("train", "optimizer", "lr")
FINAL_LR = ("train", "lr_schedule", "final_lr")


def learning_rate(
    modifiers: list[tuple[Modifier, Fields]], total: int, report: ConversionReport
) -> tuple[dict[str, Any], Templates]:
    """(the `optimizer`/`lr_schedule` part of `train`, the values that may stay templates)."""
    if not modifiers:
        return {}, []
    ordered = sorted(modifiers, key=lambda item: _start(item[1]))
    sets = [item for item in ordered if item[0].kind == SET]
    others = [item for item in ordered if item[0].kind != SET]
    if not others:
        return _sets(sets, report)
    for modifier, fields in sets:
        if _start(fields) > 0:
            return _no_equivalent(ordered, report)
        fields.number("learning_rate")
        report.map(modifier.where, "superseded by the init_lr of the modifier that follows")
    kinds = [(m.kind, _function(f) if m.kind == FUNCTION else None) for m, f in others]
    if kinds == [(FUNCTION, "cosine")]:
        return _cosine(others[0], None, total, report)
    if kinds == [(FUNCTION, "linear"), (FUNCTION, "cosine")]:
        return _cosine(others[1], others[0], total, report)
    if kinds == [(FUNCTION, "linear")]:
        return _warmup_only(others[0], report)
    if kinds == [(SCHEDULER, None)]:
        return _scheduler(others[0], report)
    return _no_equivalent(ordered, report)


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


def _sets(
    sets: list[tuple[Modifier, Fields]], report: ConversionReport
) -> tuple[dict[str, Any], Templates]:
    rates = [fields.number("learning_rate", freeze=False) for _, fields in sets]
    starts = [_start(fields) for _, fields in sets]
    if starts[0] > 0:
        return _no_equivalent(sets, report)
    for modifier, _ in sets:
        report.map(modifier.where, "a learning rate from its start_epoch")
    if len(sets) == 1:
        return {"optimizer": {"lr": rates[0].value}}, [(LR, rates[0])]
    gammas = [b.value / a.value for a, b in zip(rates, rates[1:]) if a.value]
    whole = all(s == int(s) for s in starts)
    if (
        len(gammas) != len(rates) - 1
        or not whole
        or max(gammas) - min(gammas) > 1e-12 * max(gammas)
    ):
        return _no_equivalent(sets, report)
    schedule = {"name": "multistep", "milestones": [int(s) for s in starts[1:]], "gamma": gammas[0]}
    return {"optimizer": {"lr": rates[0].value}, "lr_schedule": schedule}, [(LR, rates[0])]


def _cosine(
    cosine: tuple[Modifier, Fields],
    warmup: tuple[Modifier, Fields] | None,
    total: int,
    report: ConversionReport,
) -> tuple[dict[str, Any], Templates]:
    modifier, fields = cosine
    peak, final = fields.number("init_lr", freeze=False), fields.number("final_lr", freeze=False)
    start, end = _start(fields), fields.number("end_epoch").value
    schedule: dict[str, Any] = {"name": "cosine", "final_lr": final.value}
    if warmup is not None:
        w_modifier, w_fields = warmup
        w_start, w_end = _start(w_fields), w_fields.number("end_epoch").value
        w_initial = w_fields.number("init_lr").value
        w_final = w_fields.number("final_lr").value
        if w_start > 0 or w_end != start or w_final != peak.value or w_final <= w_initial:
            return _no_equivalent([warmup, cosine], report)
        schedule["warmup_epochs"] = w_end
        report.approximate(
            w_modifier.where,
            f"linear warm-up to {w_final:g} over {w_end:g} epochs -> warmup_epochs {w_end:g}: "
            f"acdc's warm-up starts near 0, SparseML's at init_lr {w_initial:g}",
        )
    elif start > 0:
        return _no_equivalent([cosine], report)
    if end == total:
        report.map(modifier.where, f"cosine {peak.value:g} -> {final.value:g} to the run's end")
    else:
        report.approximate(
            modifier.where,
            f"cosine to {final.value:g} ends at epoch {end:g}; acdc's cosine ends with the run "
            f"({total})",
        )
    train = {"optimizer": {"lr": peak.value}, "lr_schedule": schedule}
    return train, [(LR, peak), (FINAL_LR, final)]


def _warmup_only(
    warmup: tuple[Modifier, Fields], report: ConversionReport
) -> tuple[dict[str, Any], Templates]:
    modifier, fields = warmup
    initial, peak = fields.number("init_lr"), fields.number("final_lr", freeze=False)
    end = fields.number("end_epoch").value
    if _start(fields) > 0 or peak.value <= initial.value:
        return _no_equivalent([warmup], report)
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


def _scheduler(
    item: tuple[Modifier, Fields], report: ConversionReport
) -> tuple[dict[str, Any], Templates]:
    modifier, fields = item
    kind = fields.value("lr_class")
    arguments = fields.value("lr_kwargs", {})
    peak = fields.number("init_lr", freeze=False)
    fields.number("end_epoch", -1)
    _unused_frequency(fields)
    if _start(fields) > 0 or not isinstance(arguments, dict):
        return _no_equivalent([item], report)
    known = {"MultiStepLR": {"milestones", "gamma"}, "StepLR": {"step_size", "gamma"},
             "ExponentialLR": {"gamma"}}  # fmt: skip
    if kind not in known or set(arguments) - known[kind]:
        return _no_equivalent([item], report)
    gamma = _plain(arguments.get("gamma", 0.1))
    if kind == "MultiStepLR":
        milestones = [_plain(m) for m in arguments.get("milestones", [])]
        schedule = {"name": "multistep", "milestones": [int(m) for m in milestones]}
        if any(m != int(m) for m in milestones):
            return _no_equivalent([item], report)
        report.map(modifier.where, f"MultiStepLR at epochs {milestones}, gamma {gamma:g}")
    elif kind == "StepLR":
        step = _plain(arguments.get("step_size"))
        if not isinstance(step, (int, float)) or step != int(step) or step < 1:
            return _no_equivalent([item], report)
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
    items: list[tuple[Modifier, Fields]], report: ConversionReport
) -> tuple[dict[str, Any], Templates]:
    first = None
    for modifier, fields in items:
        for key in ("learning_rate", "init_lr"):
            if first is None and key in fields:
                first = fields.number(key).value
        for key in fields.unread():  # read them all: the whole modifier is reported here
            fields.value(key)
        report.lack(
            modifier.where,
            "this learning-rate schedule has no acdc equivalent (constant, step, multistep or "
            "cosine, after an optional linear warm-up)",
        )
    if first is None:
        return {}, []
    report.approximate("", f"the learning rate is a constant {first:g} instead")
    return {"optimizer": {"lr": first}}, []
