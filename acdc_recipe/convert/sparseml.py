"""SparseML recipes (the sparseml 1.x format) as acdc recipes.

The pruning modifiers become the schedule SparseML runs (`sparseml_pruning.simulate`), their
`params` the rules, the learning-rate modifiers `train.lr_schedule` (`sparseml_lr`). The run
lasts until the last modifier's `end_epoch` (SparseML's EpochRangeModifier only sets a
minimum), or `--epochs`.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from acdc_recipe.convert.options import ConvertOptions, sparseml_release
from acdc_recipe.convert.output import (
    REST_DENSE,
    REST_DENSE_TEXT,
    Conversion,
    finish,
    recipe_name,
    refuse_dense,
    train_section,
)
from acdc_recipe.convert.report import ConversionError, ConversionReport
from acdc_recipe.convert.schedule import MaskChange, schedule_section
from acdc_recipe.convert.sparseml_lr import LR_KINDS, learning_rate
from acdc_recipe.convert.sparseml_pruning import (
    ACDC,
    ALL_PRUNABLE,
    CONSTANT,
    GRADUAL,
    MAX_EPOCHS,
    MAX_STEPS,
    Pruner,
    check_steps,
    constant,
    is_pruning,
    pruner_of_modifier,
    prunes_in_sparseml,
    simulate,
)
from acdc_recipe.convert.sparseml_yaml import (
    Fields,
    Modifier,
    Number,
    Variable,
    evaluate_variables,
)
from acdc_recipe.language.schema import BUILTIN_LAYER_KINDS

EPOCH_RANGE = "EpochRangeModifier"
NO_EFFECT = ("log_types", "constant_logging")  # logging only
# What SparseML's __ALL_PRUNABLE__ selects: the weights of Linear and convolution layers.
SPARSEML_PRUNABLE = [
    kind for kind in BUILTIN_LAYER_KINDS if kind not in ("MultiheadAttention", "Conv1D")
]
METADATA_KEYS = ("version", "__metadata__")


def is_sparseml(data: Any) -> bool:
    """Whether parsed YAML looks like a SparseML recipe (a `*modifiers` list)."""
    return isinstance(data, dict) and any(
        "modifiers" in str(key) or (isinstance(value, dict) and _has_modifiers(value))
        for key, value in data.items()
    )


def _has_modifiers(section: dict) -> bool:
    return any("modifiers" in str(key) for key in section)


def convert_sparseml(data: dict[str, Any], source: str, options: ConvertOptions) -> Conversion:
    """Convert a parsed SparseML recipe (see the module docstring)."""
    staged = [k for k, v in data.items() if isinstance(v, dict) and _has_modifiers(v)]
    if staged:
        raise ConversionError(
            f"{source} is a staged recipe ({', '.join(map(str, staged))}); staged recipes are "
            "not converted: convert each stage's modifiers as a recipe of its own"
        )
    report = ConversionReport(source, "sparseml")
    release = sparseml_release(options.sparseml_version)
    top = {str(k): v for k, v in data.items() if "modifiers" not in str(k)}
    variables = evaluate_variables({k: v for k, v in top.items() if k not in METADATA_KEYS}, source)
    frozen = {n for v in variables.values() if v.expression is None for n in v.names}
    modifiers = _modifiers(data, source, report)
    fields = {id(m): Fields(m, variables, source, frozen) for m in modifiers}

    pruners = [
        pruner_of_modifier(m, fields[id(m)], report, release) for m in modifiers if is_pruning(m)
    ]
    if release != "latest" and any(m.kind == ACDC for m in modifiers):
        report.map("--sparseml-version", f"ACDCPruningModifier as SparseML {release}.x ran it")
    ends = [p.end for p in pruners] + [
        fields[id(m)].whole("end_epoch", -1) for m in modifiers if m.kind == EPOCH_RANGE
    ]
    total = _run_length(options.epochs, ends, source, report)
    per_epoch = check_steps(pruners, options.steps_per_epoch, source)
    if options.steps_per_epoch is not None and per_epoch == 1:
        report.map("--steps-per-epoch", "not needed: every mask update falls on an epoch start, "
                                        "so the schedule stays in epochs")  # fmt: skip
    if total * per_epoch > MAX_STEPS:
        raise ConversionError(f"{source}: runs longer than {MAX_STEPS} steps are not converted")
    changes = simulate(pruners, total, per_epoch, report) if pruners else []
    sparsity, schedule, templates = _sparsity_and_schedule(pruners, changes, total, per_epoch,
                                                           frozen, report, options)  # fmt: skip
    in_force = _in_force(changes, per_epoch)
    for m in modifiers:
        if m.kind == EPOCH_RANGE:
            fields[id(m)].number("start_epoch", 0)
            report.map(m.where, f"sets the run length ({total} epochs with the others)")
        elif m.kind == CONSTANT:
            constant(m, fields[id(m)], in_force, report)
        elif m.kind not in LR_KINDS and not is_pruning(m):
            report.lack(m.where, f"{m.kind} has no acdc equivalent")
    lr_mods = [(m, fields[id(m)]) for m in modifiers if m.kind in LR_KINDS]
    approximate = None if options.model is None else options.allow_approximate_lr
    train, lr_templates = learning_rate(lr_mods, total, report, approximate)
    for m in modifiers:
        _report_unread(m, fields[id(m)], report)
    if not sparsity:
        lost = [m.where for m in modifiers if prunes_in_sparseml(m.kind) and not is_pruning(m)]
        refuse_dense(lost, options.allow_dense, report)
    body: dict[str, Any] = {
        "version": 1,
        "name": recipe_name(source),
        "description": f"Converted from the SparseML recipe {source}."
        + (f" Its schedule is in steps of {per_epoch} per epoch." if per_epoch > 1 else ""),
    }
    if sparsity:
        body["sparsity"] = sparsity
    body["schedule"] = schedule
    body["optimizer_state"] = {"on_decompress": _decompress_policy(modifiers, fields, report)}
    body.update(train_section(options.model, train, report))
    if options.model is not None:
        report.ask(
            "SparseML recipes leave the optimizer to the training script: train.optimizer is "
            "acdc's SGD (momentum 0.9, no weight decay) with the recipe's lr; set yours"
        )
    kept = _apply_templates(body, templates + lr_templates, frozen, variables, report)
    if kept:
        body = {**{k: body[k] for k in ("version", "name", "description")}, **kept, **body}
    return finish(body, report)


def _modifiers(data: dict, source: str, report: ConversionReport) -> list[Modifier]:
    found: list[Modifier] = []
    for key, entries in data.items():
        if "modifiers" not in str(key):
            continue
        if not isinstance(entries, list):
            raise ConversionError(f"{source}: `{key}` must be a list of !Modifier entries")
        for index, entry in enumerate(entries):
            if isinstance(entry, Modifier):
                found.append(entry)
            else:
                report.lack(f"{key}[{index}]", f"{entry!r} is not a !Modifier entry")
    return found


def _run_length(
    epochs: int | None, ends: list[float], source: str, report: ConversionReport
) -> int:
    last = math.ceil(max([e for e in ends if e >= 0], default=0))
    if max(last, epochs or 0) > MAX_EPOCHS:
        raise ConversionError(f"{source}: runs longer than {MAX_EPOCHS} epochs are not converted")
    if epochs is not None:
        if last and epochs != last:
            report.map("--epochs", f"the run lasts {epochs} epochs (the modifiers end at {last})")
        return epochs
    if last < 1:
        raise ConversionError(
            f"{source}: no modifier states where training ends (an EpochRangeModifier or an "
            "end_epoch); give the run's length with --epochs N"
        )
    return last


def _sparsity_and_schedule(
    pruners: list[Pruner],
    changes: list[MaskChange],
    total: int,
    per_epoch: int,
    frozen: set[str],
    report: ConversionReport,
    options: ConvertOptions,
) -> tuple[dict[str, Any], dict[str, Any], list[tuple[tuple[str, ...], Number]]]:
    """The `sparsity` and `schedule` sections for the source's mask changes (positions in
    steps of `per_epoch` per epoch, whole epochs when it is 1), and the values that may stay
    templates of the source's variables."""
    unit, length = ("step", total * per_epoch) if per_epoch > 1 else ("epoch", total)
    if not pruners:
        report.map("", "no pruning modifier: the recipe trains dense")
        schedule, _ = schedule_section([], length, unit)
        return {}, schedule, []
    first = pruners[0]
    for other in pruners[1:]:
        for attribute, what in (("params", "params"), ("scope", "global_sparsity"),
                                ("pattern", "mask_type")):  # fmt: skip
            if _setting(other, attribute) != _setting(first, attribute):
                raise ConversionError(
                    f"{report.source}: {first.where} and {other.where} differ in `{what}`; an "
                    "acdc recipe has one schedule and one sparsity pattern for every pruned "
                    "weight, so their modifiers must share params, global_sparsity and mask_type"
                )
    schedule, target = schedule_section(changes, length, unit)
    if unit == "step":
        report.map(
            "schedule",
            f"in steps, for {per_epoch} steps per epoch (--steps-per-epoch): SparseML updates "
            "masks inside epochs, at steps that depend on it. Train with exactly that many "
            "batches per epoch, or convert again with yours",
        )
    if target is None:
        report.map("", "the pruning modifiers choose no mask within the run: the recipe trains "
                       "dense, as SparseML runs them")  # fmt: skip
        return {}, schedule, []
    sources = [number for pruner in pruners for number in pruner.targets]
    templates: list[tuple[tuple[str, ...], Number]] = []
    expressions = {number.expression for number in sources}
    if "transitions" in schedule and len(expressions) == 1 and None not in expressions:
        templates.append((("sparsity", "target"), sources[0]))
    else:
        for number in sources:
            frozen.update(number.names)
    sparsity: dict[str, Any] = {"target": target, "scope": first.scope}
    if first.pattern != "unstructured":
        sparsity["pattern"] = first.pattern
        if options.model is None:
            report.ask(
                f"a layer whose weight cannot hold {first.pattern} (a stem convolution with 3 "
                "input channels, a depthwise one) fails `acdc compile`, naming it; convert with "
                "--model NAME to find such layers and keep them dense"
            )
    sparsity.update(_prunable_set(first.params, options.keep_dense, report))
    return sparsity, schedule, templates


def _setting(pruner: Pruner, attribute: str) -> Any:
    value = getattr(pruner, attribute)
    return set(value) if attribute == "params" else value


def _in_force(changes: list[MaskChange], per_epoch: int) -> Callable[[float], bool]:
    """Whether masks are in force at an epoch, after the source's mask changes."""
    positions = [c.epoch for c in changes]

    def at(epoch: float) -> bool:
        index = bisect.bisect_right(positions, math.floor(epoch * per_epoch)) - 1
        return index >= 0 and changes[index].target is not None

    return at


def _prunable_set(
    params: tuple[str, ...], keep_dense: Mapping[str, str], report: ConversionReport
) -> dict[str, Any]:
    """SparseML's `params` as acdc's prunable set. SparseML prunes every parameter that any
    entry matches (an exact name, or a `re:` pattern matched from the start of the name,
    biases and norms included); __ALL_PRUNABLE__ is the weights of Linear and convolution
    layers. Exact names become a rule each; with patterns, every entry goes into one rule,
    so overlapping entries prune their union as SparseML does. A last rule keeps the rest
    dense; layers in `keep_dense` get a dense rule first."""
    dense = [{"match": layer, "dense": True} for layer in keep_dense]
    for layer, why in keep_dense.items():
        report.approximate(
            layer,
            f"kept dense: {why}; SparseML prunes a block4 layer after padding its input "
            "channels to a multiple of 4 (FourBlockMaskCreator) and refuses [R, C] blocks that "
            "do not divide the weight (BlockMaskCreator)",
        )
    if params == (ALL_PRUNABLE,):
        report.map("params", "__ALL_PRUNABLE__ -> the weights of Linear and convolution layers")
        return {"prunable": SPARSEML_PRUNABLE, **({"rules": dense} if dense else {})}
    if "__ALL__" in params:
        report.map("params", "__ALL__ -> every parameter, biases and norms included")
        return {"rules": [*dense, {"match": "re:.*", "include": True}]}
    patterns = [p[3:] for p in params if p.startswith("re:")]
    names = [p for p in params if not p.startswith("re:")]
    if patterns:
        union = [f"(?:{p}).*" for p in patterns] + [re.escape(n) for n in names]
        rules = [{"match": "re:" + "|".join(union), "include": True}]
        how = "one rule matching any of them (SparseML prunes what any entry matches)"
    else:
        rules = [{"match": name, "include": True} for name in names]
        how = "one rule each"
    shown = ", ".join(params[:3]) + (", ..." if len(params) > 3 else "")
    report.map(
        "params",
        f"{len(params)} distinct entries ({shown}) -> {how}, matched from the start of a "
        f"parameter's full name as SparseML matches; {REST_DENSE_TEXT}",
    )
    return {"rules": [*dense, *rules, REST_DENSE]}


def _decompress_policy(
    modifiers: list[Modifier], fields: dict[int, Fields], report: ConversionReport
) -> str:
    resets = [
        m for m in modifiers if m.kind == ACDC and fields[id(m)].flag("momentum_buffer_reset", True)
    ]
    if not resets:
        return "keep"
    report.approximate(
        resets[0].where,
        "momentum_buffer_reset: SparseML zeroes SGD momentum only, after the first step of each "
        "dense phase; acdc resets momentum (and Adam moments) before it, as the paper's code",
    )
    return "reset"


def _report_unread(modifier: Modifier, fields: Fields, report: ConversionReport) -> None:
    for key in fields.unread():
        if key in NO_EFFECT:
            report.map(modifier.where, f"`{key}` only changes logging")
        elif modifier.kind in (ACDC, CONSTANT, EPOCH_RANGE, *GRADUAL, *LR_KINDS):
            report.lack(modifier.where, f"key `{key}` has no equivalent")


def _apply_templates(
    body: dict[str, Any],
    templates: list[tuple[tuple[str, ...], Number]],
    frozen: set[str],
    variables: dict[str, Variable],
    report: ConversionReport,
) -> dict[str, Any]:
    """Write the values the source computed from variables as templates of those variables
    (where changing a variable cannot leave the schedule behind); return the `variables`
    section they need."""
    used: set[str] = set()
    for path, number in templates:
        if number.expression is None or number.names & frozen:
            continue
        node = body
        for key in path[:-1]:
            node = node.get(key, {})
        if path[-1] in node:
            node[path[-1]] = "{{ " + number.expression + " }}"
            used |= number.names
    if used:
        report.map("variables", f"{', '.join(sorted(used))} stay recipe variables (--set NAME=...)")
    if frozen:
        report.map(
            "variables",
            f"{', '.join(sorted(frozen))} are evaluated into the recipe (they feed the schedule "
            "or an eval() with a function call); to change them, change the SparseML recipe "
            "and convert it again",
        )
    if not used:
        return {}
    return {
        "variables": {
            name: "{{ " + var.expression + " }}" if var.expression else var.value
            for name, var in variables.items()
            if name in used
        }
    }
