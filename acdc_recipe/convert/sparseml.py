"""SparseML recipes (the sparseml 1.x format) as acdc recipes.

The pruning modifiers become the schedule as SparseML runs them (`sparseml_pruning`), their
`params` the rules, the learning-rate modifiers `train.lr_schedule` (`sparseml_lr`). The run
lasts until the last modifier's `end_epoch` (SparseML's EpochRangeModifier only sets a
minimum), or `--epochs`.
"""

from __future__ import annotations

from typing import Any

from acdc_recipe.convert.output import (
    REST_DENSE,
    REST_DENSE_TEXT,
    Conversion,
    finish,
    recipe_name,
    train_section,
)
from acdc_recipe.convert.report import ConversionError, ConversionReport
from acdc_recipe.convert.schedule import schedule_section
from acdc_recipe.convert.sparseml_lr import LR_KINDS, learning_rate
from acdc_recipe.convert.sparseml_pruning import (
    ACDC,
    ALL_PRUNABLE,
    CONSTANT,
    GRADUAL,
    MAX_EPOCHS,
    Pruner,
    constant,
    is_pruning,
    mask_changes,
    pruner_of_modifier,
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


def convert_sparseml(
    data: dict[str, Any], source: str, epochs: int | None, model: str | None
) -> Conversion:
    """Convert a parsed SparseML recipe (see the module docstring)."""
    staged = [k for k, v in data.items() if isinstance(v, dict) and _has_modifiers(v)]
    if staged:
        raise ConversionError(
            f"{source} is a staged recipe ({', '.join(map(str, staged))}); staged recipes are "
            "not converted: convert each stage's modifiers as a recipe of its own"
        )
    report = ConversionReport(source, "sparseml")
    top = {str(k): v for k, v in data.items() if "modifiers" not in str(k)}
    variables = evaluate_variables({k: v for k, v in top.items() if k not in METADATA_KEYS}, source)
    frozen: set[str] = set()
    modifiers = _modifiers(data, source, report)
    fields = {id(m): Fields(m, variables, source, frozen) for m in modifiers}

    pruners = [pruner_of_modifier(m, fields[id(m)], report) for m in modifiers if is_pruning(m)]
    ends = [p.end for p in pruners] + [
        fields[id(m)].whole("end_epoch", -1) for m in modifiers if m.kind == EPOCH_RANGE
    ]
    total = _run_length(epochs, ends, source, report)
    for m in modifiers:
        if m.kind == EPOCH_RANGE:
            fields[id(m)].number("start_epoch", 0)
            report.map(m.where, f"sets the run length ({total} epochs with the others)")
        elif m.kind == CONSTANT:
            constant(m, fields[id(m)], pruners, report)
        elif m.kind not in LR_KINDS and not is_pruning(m):
            report.lack(m.where, f"{m.kind} has no acdc equivalent")

    sparsity, schedule, templates = _sparsity_and_schedule(pruners, total, frozen, report)
    lr_mods = [(m, fields[id(m)]) for m in modifiers if m.kind in LR_KINDS]
    train, lr_templates = learning_rate(lr_mods, total, report)
    for m in modifiers:
        _report_unread(m, fields[id(m)], report)
    body: dict[str, Any] = {
        "version": 1,
        "name": recipe_name(source),
        "description": f"Converted from the SparseML recipe {source}.",
    }
    if sparsity:
        body["sparsity"] = sparsity
    body["schedule"] = schedule
    body["optimizer_state"] = {"on_decompress": _decompress_policy(modifiers, fields, report)}
    body.update(train_section(model, train, report))
    if model is not None:
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


def _run_length(epochs: int | None, ends: list[int], source: str, report: ConversionReport) -> int:
    last = max([e for e in ends if e >= 0], default=0)
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
    pruners: list[Pruner], total: int, frozen: set[str], report: ConversionReport
) -> tuple[dict[str, Any], dict[str, Any], list[tuple[tuple[str, ...], Number]]]:
    if not pruners:
        report.map("", "no pruning modifier: the recipe trains dense")
        schedule, _ = schedule_section([], total)
        return {}, schedule, []
    first = pruners[0]
    for other in pruners[1:]:
        for attribute, what in (("params", "params"), ("scope", "global_sparsity"),
                                ("pattern", "mask_type")):  # fmt: skip
            if getattr(other, attribute) != getattr(first, attribute):
                raise ConversionError(
                    f"{report.source}: {first.where} and {other.where} differ in `{what}`; an "
                    "acdc recipe has one schedule and one sparsity pattern for every pruned "
                    "weight, so their modifiers must share params, global_sparsity and mask_type"
                )
    changes = mask_changes(pruners, total, report)
    schedule, target = schedule_section(changes, total)
    if target is None:
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
    sparsity.update(_prunable_set(first.params, report))
    return sparsity, schedule, templates


def _prunable_set(params: tuple[str, ...], report: ConversionReport) -> dict[str, Any]:
    """SparseML's `params` as acdc's prunable set: __ALL_PRUNABLE__ is the default set of
    layer types; names and `re:` patterns (matched from the start of a parameter's full name,
    biases and norms included) become rules, and a last rule keeps everything else dense."""
    if params == (ALL_PRUNABLE,):
        report.map("params", "__ALL_PRUNABLE__ -> the weights of Linear and convolution layers")
        return {"prunable": SPARSEML_PRUNABLE}
    if "__ALL__" in params:
        report.map("params", "__ALL__ -> every parameter, biases and norms included")
        return {"rules": [{"match": "re:.*", "include": True}]}
    rules = [
        {"match": f"re:(?:{p[3:]}).*" if p.startswith("re:") else p, "include": True}
        for p in params
    ]
    shown = ", ".join(params[:3]) + (", ..." if len(params) > 3 else "")
    report.map(
        "params",
        f"{shown} -> rules that prune what they match (from the start of a parameter's name, "
        f"as SparseML matches); {REST_DENSE_TEXT}",
    )
    return {"rules": [*rules, REST_DENSE]}


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
            f"{', '.join(sorted(frozen))} are evaluated into the schedule; to change them, "
            "change the SparseML recipe and convert it again",
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
