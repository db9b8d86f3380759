"""Configs of the paper's reference code (IST-DASLab/ACDC) as acdc recipes.

What the reference's training loop does with a config, epoch by epoch:

- `pruners`: each entry's `epochs: [start, freq, end]` adds the epochs of
  `range(start, end, freq)` to the pruning epochs. At a pruning epoch every pruner is called,
  and each acts when `(epoch - start) % freq == 0` and `start <= epoch <= end`, choosing masks
  at `target - (target - initial) * (1 - progress) ** degree` (progress `(epoch - start) /
  (end - start)`; `initial_sparsity == target_sparsity` for AC/DC). UnstructuredMagnitudePruner
  ranks all its modules' weights together (global), MagnitudePruner each layer on its own
  (uniform), MagnitudeNMPruner keeps N of every M.
- `recyclers`: RestoreWeights drops the masks (dense training, pruned weights restart at zero)
  at the epochs of its `range(start, end, freq)` that are not pruning epochs; with
  `--reset_momentum_after_recycling` the momentum is zeroed before the next step. Restoring a
  layer no pruner prunes sets an all-ones mask to all ones: nothing, so such modules are
  ignored (the paper's `..._no_conv1_fc` configs list conv1 and fc in a recycler).
- `trainers.default_trainer`: `optimizer` (SGD) and `lr_scheduler`, which is stepped at the end
  of the epochs `start, start + freq, ... <= end` of its `epochs` (`TrainingPolicy.on_epoch_end`)
  and once when it is built, so the lr of epoch e is its value after n(e) + 1 steps.

The run's length is a command-line argument of the reference (`--epochs`), so it is one here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from acdc_recipe.convert.options import ConvertOptions
from acdc_recipe.convert.output import (
    REST_DENSE,
    REST_DENSE_TEXT,
    Conversion,
    finish,
    recipe_name,
    refuse_dense,
    train_section,
)
from acdc_recipe.convert.reference_lr import lr_schedule
from acdc_recipe.convert.report import ConversionError, ConversionReport, listed
from acdc_recipe.convert.schedule import MaskChange, schedule_section

SECTIONS = ("pruners", "recyclers", "trainers")
PRUNERS = {  # class -> how it ranks weights
    "UnstructuredMagnitudePruner": "global",
    "MagnitudePruner": "uniform",
    "MagnitudeNMPruner": "n:m",
}
PRUNER_KEYS = {
    "class", "epochs", "initial_sparsity", "target_sparsity", "weight_only", "modules",
    "keep_pruned", "degree", "N", "M",
}  # fmt: skip
RECYCLER_KEYS = {"class", "epochs", "weight_only", "modules"}
SGD_KEYS = {"class", "lr", "momentum", "weight_decay", "nesterov", "dampening"}
MAX_EPOCHS = 100_000  # far beyond any real run; bounds the work a hostile config can ask for


@dataclass(frozen=True)
class Policy:
    """One pruner or recycler: where it is, its `[start, freq, end]`, and its modules."""

    where: str
    start: int
    frequency: int
    end: int
    modules: tuple[str, ...]
    weight_only: bool
    config: dict[str, Any]

    def scheduled(self) -> range:
        """The epochs the training loop calls it at (the end excluded; none past the cap)."""
        return range(self.start, min(self.end, MAX_EPOCHS), self.frequency)

    def acts_at(self, epoch: int) -> bool:
        """Whether it acts when called at `epoch` (the end included)."""
        return self.start <= epoch <= self.end and (epoch - self.start) % self.frequency == 0


def is_reference(data: Any) -> bool:
    """Whether parsed YAML looks like a reference config (pruners, recyclers, trainers)."""
    return isinstance(data, dict) and any(key in data for key in SECTIONS)


def convert_reference(data: dict[str, Any], source: str, options: ConvertOptions) -> Conversion:
    """Convert a parsed reference config (see the module docstring)."""
    epochs = options.epochs
    if epochs is None:
        raise ConversionError(
            f"{source} is a reference-code config, which does not state the run's length (its "
            "launch scripts pass --epochs to main.py); give it with --epochs N"
        )
    if epochs > MAX_EPOCHS:
        raise ConversionError(f"{source}: runs longer than {MAX_EPOCHS} epochs are not converted")
    report = ConversionReport(source, "reference")
    if options.steps_per_epoch is not None:
        report.map("--steps-per-epoch", "not needed: the reference acts at epoch starts only")
    for key in data:
        if key not in SECTIONS:
            report.lack(str(key), "this section has no equivalent")
    pruners = _policies(data, "pruners", PRUNERS, PRUNER_KEYS, report)
    recyclers = _policies(data, "recyclers", {"RestoreWeights": "dense"}, RECYCLER_KEYS, report)
    changes = _mask_changes(pruners, recyclers, epochs, report)
    schedule, target = schedule_section(changes, epochs)
    body: dict[str, Any] = {
        "version": 1,
        "name": recipe_name(source),
        "description": f"Converted from the AC/DC reference-code config {source}.",
    }
    if target is not None:
        body["sparsity"] = _sparsity(pruners, recyclers, target, options, report)
    else:
        named = data.get("pruners") if isinstance(data.get("pruners"), dict) else {}
        converted = {p.where for p in pruners}
        lost = [f"pruners.{name}" for name in named if f"pruners.{name}" not in converted]
        refuse_dense(lost, options.allow_dense, report)
    body["schedule"] = schedule
    body["optimizer_state"] = {"on_decompress": "reset"}
    if recyclers:
        report.approximate(
            "recyclers",
            "optimizer_state.on_decompress: reset zeroes the momentum at each dense phase, as "
            "the reference does when run with --reset_momentum_after_recycling (its launch "
            "scripts pass it); use `keep` for a run without it",
        )
    trainer = _trainer(data.get("trainers"), epochs, report, options)
    body.update(train_section(options.model, trainer, report))
    return finish(body, report)


def _policies(
    data: dict[str, Any],
    section: str,
    classes: dict[str, str],
    keys: set[str],
    report: ConversionReport,
) -> list[Policy]:
    entries = data.get(section) or {}
    if not isinstance(entries, dict):
        raise ConversionError(f"{report.source}: `{section}` must map names to entries")
    found = []
    for name, config in entries.items():
        where = f"{section}.{name}"
        if not isinstance(config, dict):
            raise ConversionError(f"{report.source}: `{where}` must be a mapping")
        kind = config.get("class")
        if not isinstance(kind, str) or kind not in classes:
            report.lack(
                where, f"class {kind} has no equivalent (known: {', '.join(classes)}); left out"
            )
            continue
        for key in config:
            if key not in keys:
                report.lack(where, f"key `{key}` has no equivalent")
        if config.get("keep_pruned"):
            report.lack(where, "keep_pruned: True (restore old values) has no equivalent")
        found.append(_policy(where, config, report.source))
    return found


def _policy(where: str, config: dict[str, Any], source: str) -> Policy:
    schedule = config.get("epochs")
    if (
        not isinstance(schedule, list)
        or len(schedule) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in schedule)
        or schedule[1] < 1
        or not 0 <= schedule[0] <= MAX_EPOCHS
    ):
        raise ConversionError(
            f"{source}: `{where}.epochs` must be [start, freq, end] (whole numbers, freq >= 1), "
            f"got {schedule!r}"
        )
    modules = config.get("modules")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        raise ConversionError(f"{source}: `{where}.modules` must be a list of module names")
    weight_only = config.get("weight_only", True)
    return Policy(where, *schedule, tuple(modules), bool(weight_only), config)


def _level(pruner: Policy, epoch: int, source: str) -> float:
    """The sparsity `pruner` chooses masks at when it acts at `epoch`."""
    config = pruner.config
    if PRUNERS[config["class"]] == "n:m":
        n, m = config.get("N"), config.get("M")
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise ConversionError(f"{source}: `{pruner.where}` needs whole numbers 0 < N < M")
        return (m - n) / m
    try:
        initial = float(config["initial_sparsity"])
        target = float(config["target_sparsity"])
        degree = float(config.get("degree", 3))
    except (KeyError, TypeError, ValueError):
        raise ConversionError(
            f"{source}: `{pruner.where}` needs numeric initial_sparsity and target_sparsity"
        ) from None
    span = pruner.end - pruner.start
    if not (0 <= initial < 1 and 0 < target < 1 and 0 < degree < math.inf):
        raise ConversionError(
            f"{source}: `{pruner.where}` needs 0 <= initial_sparsity < 1, 0 < target_sparsity "
            f"< 1 and a positive degree, got {initial}, {target} and {degree}"
        )
    progress = min((epoch - pruner.start) / span, 1.0) if span > 0 else 1.0
    return target - (target - initial) * (1.0 - progress) ** degree


def _mask_changes(
    pruners: list[Policy], recyclers: list[Policy], epochs: int, report: ConversionReport
) -> list[MaskChange]:
    pruning = sorted({e for p in pruners for e in p.scheduled()})
    restoring = sorted({e for r in recyclers for e in r.scheduled()} - set(pruning))
    changes = []
    for epoch in pruning:
        levels = [_level(p, epoch, report.source) for p in pruners if p.acts_at(epoch)]
        level = max(levels, default=0.0)
        if level > 0:
            changes.append(MaskChange(epoch, level))
    changes += [MaskChange(epoch, None) for epoch in restoring]
    late = sorted(c.epoch for c in changes if c.epoch >= epochs)
    if late:
        report.map("", f"epochs {listed(late)} are past the run's end ({epochs}), never reached")
    for policy in pruners + recyclers:
        at = [e for e in policy.scheduled() if e < epochs]
        verb = "prunes" if policy in pruners else "restores dense training"
        report.map(
            policy.where,
            f"epochs {[policy.start, policy.frequency, policy.end]}: {verb} at "
            + (listed(at) if at else "no epoch"),
        )
    return [c for c in changes if c.epoch < epochs]


def _sparsity(
    pruners: list[Policy],
    recyclers: list[Policy],
    target: float,
    options: ConvertOptions,
    report: ConversionReport,
) -> dict[str, Any]:
    source = report.source
    first = pruners[0]
    pruned = set(first.modules)
    for other in pruners[1:]:
        if set(other.modules) != pruned:
            raise ConversionError(
                f"{source}: `{first.where}` and `{other.where}` list different modules; an acdc "
                "recipe has one schedule for every pruned weight, so every pruner must list the "
                "same modules"
            )
    for recycler in recyclers:
        missing = [m for m in first.modules if m not in recycler.modules]
        if missing:
            raise ConversionError(
                f"{source}: `{recycler.where}` does not restore {', '.join(missing[:4])}, which "
                f"`{first.where}` prunes; an acdc recipe has one schedule for every pruned "
                "weight, so every recycler must restore every pruned module"
            )
        extra = [m for m in recycler.modules if m not in pruned]
        if extra:
            report.map(
                recycler.where,
                f"also lists {listed(extra)}, which no pruner prunes: restoring them does nothing "
                "in the reference (their masks are all ones), so they are ignored",
            )
    kinds = {PRUNERS[p.config["class"]] for p in pruners}
    if len(kinds) > 1:
        raise ConversionError(
            f"{source}: the pruners mix {', '.join(sorted(kinds))} selection; one recipe has one"
        )
    (kind,) = kinds
    sparsity: dict[str, Any] = {
        "target": target,
        "scope": "global" if kind == "global" else "uniform",
    }
    if kind == "n:m":
        sparsity["pattern"] = f"{first.config['N']}:{first.config['M']}"
    modules = _model_names(list(first.modules), options.model, report)
    for layer, why in options.keep_dense.items():
        report.approximate(
            layer,
            f"kept dense: {why}; the reference's MagnitudeNMPruner prunes it in groups of M "
            "consecutive weights of its [out, kh, kw, in] layout, across kernel positions",
        )
    modules = [m for m in modules if m not in options.keep_dense]
    rules = [
        {"match": f"{name}.weight"} if first.weight_only else {"match": name, "include": True}
        for name in modules
    ]
    sparsity["rules"] = [*rules, REST_DENSE]
    report.map(
        first.where,
        f"{len(modules)} modules -> one rule each for "
        + ("its weight" if first.weight_only else "its weight and bias (weight_only: False)")
        + f" (each must name a layer of the model); {REST_DENSE_TEXT}",
    )
    if kind == "n:m" and options.model is None:
        report.ask(
            f"a layer whose weight cannot hold {sparsity['pattern']} (fewer input channels "
            "than M, as a 3-channel stem convolution; the reference groups such a layer across "
            "kernel positions) fails `acdc compile`, naming it; convert with --model NAME to "
            "find such layers and keep them dense"
        )
    if kind != "n:m":
        report.approximate(
            first.where,
            "the reference keeps one weight fewer than the target count in each selection (its "
            "threshold is the k-th largest score and the mask keeps scores strictly above it); "
            "acdc prunes exactly round(target x weights)",
        )
    return sparsity


_REFERENCE_MOBILENET = re.compile(r"^model\.(\d+)\.([03])$")


def _model_names(modules: list[str], model: str | None, report: ConversionReport) -> list[str]:
    """The modules as the named model calls them: the reference's MobileNetV1 (`model.0.0`,
    then block i's depthwise `model.i.0` and pointwise `model.i.3`) as the built-in
    `mobilenet_v1`'s (`features.0.0`, `features.{2i-1}.0`, `features.{2i}.0`)."""
    ours = [m for m in modules if _REFERENCE_MOBILENET.match(m)]
    if not ours or any(m != "fc" and m not in ours for m in modules):
        return modules
    if model != "mobilenet_v1":
        report.ask(
            "the modules are the reference MobileNetV1's (model.N.M); convert with --model "
            "mobilenet_v1 to name them as acdc's built-in model does (features.K.0), or use "
            "the reference's model through an import path"
        )
        return modules

    def renamed(name: str) -> str:
        match = _REFERENCE_MOBILENET.match(name)
        if match is None:
            return name
        block, conv = int(match[1]), match[2]
        return "features.0.0" if block == 0 else f"features.{2 * block - (conv == '0')}.0"

    report.map(
        "modules",
        "the reference MobileNetV1's names -> the built-in mobilenet_v1's: model.0.0 -> "
        "features.0.0, model.i.0 (depthwise) -> features.{2i-1}.0, model.i.3 (pointwise) -> "
        "features.{2i}.0, fc -> fc",
    )
    return [renamed(m) for m in modules]


def _trainer(
    trainers: Any, epochs: int, report: ConversionReport, options: ConvertOptions
) -> dict[str, Any]:
    if not isinstance(trainers, dict):
        return {}
    for name in trainers:
        if name != "default_trainer":
            report.lack(f"trainers.{name}", "only default_trainer is converted")
    trainer = trainers.get("default_trainer")
    if not isinstance(trainer, dict):
        return {}
    for key in trainer:
        if key not in ("optimizer", "lr_scheduler"):
            report.lack(f"trainers.default_trainer.{key}", "has no equivalent")
    train: dict[str, Any] = {}
    optimizer = _optimizer(trainer.get("optimizer"), report)
    if optimizer:
        train["optimizer"] = optimizer
    approximate = None if options.model is None else options.allow_approximate_lr
    schedule = lr_schedule(trainer.get("lr_scheduler"), epochs, report, approximate)
    if schedule:
        train["lr_schedule"] = schedule
    return train


def _optimizer(config: Any, report: ConversionReport) -> dict[str, Any]:
    where = "trainers.default_trainer.optimizer"
    if not isinstance(config, dict):
        return {}
    if config.get("class") != "SGD":
        report.lack(where, f"class {config.get('class')} has no equivalent (SGD converts)")
        return {}
    for key in config:
        if key not in SGD_KEYS:
            report.lack(where, f"key `{key}` has no equivalent")
    if config.get("dampening", 0):
        report.lack(where, "dampening has no equivalent")
    optimizer = {
        "name": "sgd",
        "lr": config.get("lr", 0.1),
        "momentum": config.get("momentum", 0.0),
        "nesterov": bool(config.get("nesterov", False)),
        "weight_decay": config.get("weight_decay", 0.0),
    }
    report.map(where, "SGD: lr, momentum, nesterov, weight_decay (on every parameter)")
    return optimizer
