"""The converted recipe as a file: the report as its header comment, then the recipe body;
checked by loading it back as any recipe is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from acdc_recipe.convert.report import ConversionError, ConversionReport
from acdc_recipe.errors import RecipeError
from acdc_recipe.files import folder_name
from acdc_recipe.language.loading import load_recipe_text
from acdc_recipe.language.schema import Recipe

# Keep everything but the listed parameters dense. `include: true` lets the rule claim norms,
# biases and unlisted layers alike, so it claims something in any model that has a parameter
# besides the listed ones (the check that every rule matches a parameter then holds).
REST_DENSE = {"match": "re:.*", "dense": True, "include": True}
REST_DENSE_TEXT = (
    "the last rule keeps every other parameter dense (if compiling says it claims nothing, the "
    "listed parameters are all the model has: delete it)"
)


@dataclass(frozen=True)
class Conversion:
    """A converted recipe: the validated `Recipe`, the YAML `text` to write, and the report."""

    recipe: Recipe
    text: str
    report: ConversionReport


def recipe_name(source: str) -> str:
    """A recipe name from the source file's name ('ac_dc_recipe.md' -> 'ac_dc_recipe')."""
    return folder_name(Path(source).stem)


def train_section(model: str | None, train: dict[str, Any], report: ConversionReport) -> dict:
    """`train` for --model NAME (with what the source said about the optimizer and the LR
    schedule), or nothing: a train section needs a model, which neither format names."""
    if model is None:
        left_out = " (the optimizer and LR settings above are left out without one)"
        report.ask("give --model NAME to write a train section" + (left_out if train else ""))
        return {}
    report.ask(
        "train.data is the default (digits): set the data source, e.g. "
        "--set train.data.source=cifar100 --set train.data.root=DIR on `acdc run`"
    )
    return {"train": {"model": {"name": model}, **train}}


def refuse_dense(pruning: list[str], allow_dense: bool, report: ConversionReport) -> None:
    """Refuse a recipe that trains dense because the source's pruning parts (`pruning` names
    them) were left out, unless `allow_dense`; either way the report says what was lost."""
    if not pruning:
        return
    reasons = [item.render() for item in report.no_equivalent + report.mapped
               if any(item.where.startswith(part) for part in pruning)]  # fmt: skip
    reasons = reasons or [f"{part}: left out" for part in pruning]
    lost = "; ".join(reasons[:4]) + (f"; and {len(reasons) - 4} more" if len(reasons) > 4 else "")
    if not allow_dense:
        raise ConversionError(
            f"{report.source} prunes, but its pruning is left out ({lost}), so the converted "
            "recipe would train dense; give --allow-dense to write that dense recipe anyway"
        )
    report.lack("", f"every pruning part of the source is lost, the recipe trains dense: {lost}")


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists of scalars (`[10, 20]`) and short
    mappings of scalars (`{match: conv1}`, `{dense: 10}`)."""


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = all(_is_scalar(v) for v in data.values()) and len(str(data)) <= 80
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(_is_scalar(v) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def finish(body: dict[str, Any], report: ConversionReport) -> Conversion:
    """Write `body` below the report as a comment and load the text back as a recipe."""
    header = "".join(f"# {line}\n" if line else "#\n" for line in report.lines())
    text = header + yaml.dump(body, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    try:
        recipe = load_recipe_text(text, f"<converted from {report.source}>")
    except RecipeError as error:
        raise ConversionError(
            f"{report.source} converts to a recipe that does not validate: {error}"
        ) from None
    return Conversion(recipe, text, report)
