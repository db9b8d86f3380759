"""Recipe text -> validated `Recipe`, with every problem located in the source.

The pipeline: read -> YAML nodes (safe loader, positions kept, size bounded: `yaml_tree`) ->
`--set` overrides -> variables -> templates -> pydantic validation -> schedule lowering. Every
failure becomes a `RecipeError` listing all problems found at that stage, each with file, line
and key (or the `--set` that set it).
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from acdc_recipe.errors import KeyPath, Problem, RecipeError, did_you_mean, format_path
from acdc_recipe.language import templating
from acdc_recipe.language.schema import Recipe
from acdc_recipe.language.timeline import ScheduleError, lower
from acdc_recipe.language.validation_messages import describe_error
from acdc_recipe.language.yaml_tree import Marks, parse_yaml

Origins = dict[KeyPath, str]  # keys set by `--set` (or a keyword argument) -> how they were set


def shipped_recipes() -> dict[str, str]:
    """Names of the recipes shipped with the package -> their text."""
    folder = importlib.resources.files("acdc_recipe.recipes")
    return {
        entry.name.removesuffix(".yaml"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def read_source(source: str | Path) -> tuple[str, str]:
    """(text, display name) of a recipe file or a shipped recipe name."""
    path = Path(source)
    if path.is_dir():
        raise RecipeError([Problem("this is a folder; give a recipe file (.yaml)")], str(path))
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as error:
            raise RecipeError(
                [Problem(f"cannot read the file: {error.strerror}")], str(path)
            ) from None
        return decode_recipe(data, str(path)), str(path)
    shipped = shipped_recipes()
    if str(source) in shipped:
        return shipped[str(source)], f"<shipped:{source}>"
    hint = did_you_mean(path.stem, shipped)
    raise RecipeError(
        [
            Problem(
                "no such file, and no shipped recipe of that name (shipped: "
                + ", ".join(sorted(shipped))
                + ")",
                suggestion=hint,
            )
        ],
        str(source),
    )


def decode_recipe(data: bytes, source: str = "<recipe>") -> str:
    """A recipe file's bytes as text (UTF-8); anything else is an error at its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise RecipeError(
            [
                Problem(
                    f"the file is not UTF-8 text: byte 0x{data[error.start]:02x} cannot start "
                    "or continue a character (save the recipe as UTF-8)",
                    (),
                    line,
                    column,
                )
            ],
            source,
        ) from None


def load_recipe(
    source: str | Path, overrides: Mapping[str, Any] | None = None, **variables: Any
) -> Recipe:
    """Load, template and validate a recipe file (or a shipped recipe by name).

    `overrides` are `--set` values: a bare name sets a declared variable, a dotted path
    (`train.batch_size`) sets that key. Keyword arguments set variables too.
    """
    text, name = read_source(source)
    return load_recipe_text(text, name, overrides, **variables)


def load_recipe_text(
    text: str,
    source: str = "<recipe>",
    overrides: Mapping[str, Any] | None = None,
    **variables: Any,
) -> Recipe:
    """Like `load_recipe`, from text already in memory."""
    data, marks = parse_yaml(text, source)
    labels = {key: f"--set {key}" for key in overrides or {}}
    labels.update({key: f"load_recipe(..., {key}=...)" for key in variables})
    data = _apply_overrides(data, {**(overrides or {}), **variables}, labels, marks, source)
    origins = {tuple(key.split(".")): label for key, label in labels.items() if "." in key}
    data = _render_templates(data, marks, source, origins)
    return validate_recipe(data, source, marks, origins)


def validate_recipe(
    data: Any, source: str, marks: Marks | None = None, origins: Origins | None = None
) -> Recipe:
    """`data` (a recipe as plain values) validated into a `Recipe` whose schedule lowers;
    every problem raised as one `RecipeError`, located by `marks` and `origins` when given."""
    marks, origins = marks or {}, origins or {}
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as error:
        problems = [_locate(describe_error(e, data), marks, origins) for e in error.errors()]
        raise RecipeError(problems, source) from None
    try:
        lower(recipe.schedule)
    except ScheduleError as error:
        problem = _locate(Problem(str(error), error.path), marks, origins)
        raise RecipeError([problem], source) from None
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML: variables evaluated, every default written out."""
    body = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return "# Resolved recipe: variables evaluated, defaults written out.\n" + body


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """['sparsity=0.95', 'train.seed=1'] -> {'sparsity': 0.95, 'train.seed': 1}."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()):
            raise RecipeError(
                [Problem(f"--set expects key=value (e.g. sparsity=0.95), got {item!r}")],
                "<command line>",
            )
        result[key.strip()] = templating.parse_typed(value)
    return result


def _apply_overrides(
    data: dict, overrides: Mapping[str, Any], labels: Mapping[str, str], marks: Marks, source: str
) -> dict:
    """Set `overrides` (variables by name, keys by dotted path); `labels` name each one as the
    caller gave it (`--set k`, or a keyword argument) for the error messages."""
    if not overrides:
        return data
    declared = data.get("variables") if isinstance(data.get("variables"), dict) else {}
    variables, problems = dict(declared), []
    used = templating.referenced_names([data, list(overrides.values())])  # --set templates too
    for key, value in overrides.items():
        if "." not in key:
            if key in declared and key not in used:
                problems.append(
                    Problem(
                        f"{labels[key]}: no template uses this variable, so setting it would "
                        "change nothing (a resolved recipe, such as a build folder's "
                        "recipe.yaml, has its templates evaluated); set the key by its dotted "
                        "path instead, e.g. sparsity.target=0.95",
                        ("variables", key),
                    )
                )
            elif key not in declared:
                known = ", ".join(declared) or "none"
                how = (
                    "set a recipe key with its dotted path, e.g. train.seed=1"
                    if labels[key].startswith("--set")
                    else "pass recipe keys by dotted path in overrides, e.g. "
                    "load_recipe(path, {'train.seed': 1})"
                )
                problems.append(
                    Problem(
                        f"{labels[key]}: no such variable (declared: {known}); {how}",
                        ("variables",),
                        suggestion=did_you_mean(key, declared),
                    )
                )
            variables[key] = value
            continue
        target, parts = data, key.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part, {}), dict):
                problems.append(Problem(f"{labels[key]}: `{part}` is not a mapping", ()))
                break
            target = target.setdefault(part, {})
        else:
            target[parts[-1]] = value
    if problems:
        raise RecipeError([_locate(p, marks) for p in problems], source)
    if variables:
        data["variables"] = variables
    return data


def _render_templates(data: dict, marks: Marks, source: str, origins: Origins) -> dict:
    problems: list[Problem] = []

    def report(path: tuple, message: str) -> None:
        problems.append(_locate(Problem(message, path), marks, origins))

    def report_variable(path: tuple, message: str) -> None:
        if "is undefined" in message:
            message += "; a variable can use only the variables declared before it"
        report(path, message)

    declared = data.get("variables", {})
    if not isinstance(declared, dict):
        return data  # validation reports the wrong type
    variables: dict[str, Any] = {}
    for name, value in declared.items():  # a variable may use the ones before it
        variables[name] = templating.render_tree(
            value, variables, report_variable, ("variables", name)
        )
    rest = {k: v for k, v in data.items() if k != "variables"}
    rendered = templating.render_tree(rest, variables, report)
    if problems:
        raise RecipeError(problems, source)
    return {"variables": variables, **rendered} if "variables" in data else rendered


def _locate(problem: Problem, marks: Marks, origins: Origins | None = None) -> Problem:
    """`problem` at its key's line and column; or, for a value set by `--set` (or a key that
    such a value added), at that `--set`."""
    path = problem.path
    for key, label in (origins or {}).items():
        inside = path[: len(key)] == key
        added = bool(path) and key[: len(path)] == path and path not in marks
        if inside or added:
            return Problem(problem.message, path, suggestion=problem.suggestion, origin=label)
    for end in range(len(path), -1, -1):
        if path[:end] in marks:
            line, column = marks[path[:end]]
            return Problem(problem.message, path, line, column, problem.suggestion)
    return problem


__all__ = [
    "dump_recipe",
    "format_path",
    "load_recipe",
    "load_recipe_text",
    "parse_set_args",
    "shipped_recipes",
    "validate_recipe",
]
