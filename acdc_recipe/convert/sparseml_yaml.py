"""Reading a SparseML recipe safely: YAML (or a markdown card's front matter) whose `!Modifier`
tags become plain `Modifier` records, and variables whose `eval(...)` expressions are checked
against SparseML's eval subset (`sparseml_eval`) and, where arithmetic, translated to jinja2,
the language of acdc recipe variables.

Nothing in the file is executed: the loader is a `yaml.SafeLoader` that knows one more kind of
tag, and an expression is parsed with `ast` and evaluated node by node.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from acdc_recipe.convert.report import ConversionError
from acdc_recipe.convert.sparseml_eval import (
    evaluate,
    has_call,
    is_number,
    names_in,
    parse_expression,
)

# SparseML's front matter (load_recipe_yaml_str): the text between the first two `---` or
# `+++` delimiters (Jekyll's YAML and Hugo's TOML-style fences), the first at a line start.
_FRONT_MATTER = re.compile(r"^\s*(?:---|\+\+\+)(.*?)(?:---|\+\+\+)", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Modifier:
    """A `!Name` entry of a modifiers list: its class name (any `pytorch.` prefix dropped),
    its fields as written, and its line in the file."""

    kind: str
    fields: dict[str, Any]
    line: int

    @property
    def where(self) -> str:
        return f"!{self.kind} (line {self.line})"


class SparseMLLoader(yaml.SafeLoader):
    """A SafeLoader that also accepts `!Name` tags on mappings (and on empty entries)."""


def _construct_modifier(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Modifier:
    line = node.start_mark.line + 1
    kind = suffix.rsplit(".", 1)[-1]
    if isinstance(node, yaml.ScalarNode) and node.value == "":
        return Modifier(kind, {}, line)
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"!{suffix} must tag a mapping of fields", node.start_mark
        )
    fields = loader.construct_mapping(node, deep=True)
    return Modifier(kind, {str(key): value for key, value in fields.items()}, line)


SparseMLLoader.add_multi_constructor("!", _construct_modifier)


def parse_yaml(text: str, source: str) -> Any:
    """The file's data (a markdown recipe card's front matter when `source` ends in .md)."""
    if source.lower().endswith(".md"):
        match = _FRONT_MATTER.search(text)
        if match is None:
            raise ConversionError(
                f"{source} is a markdown file without YAML front matter (a recipe between two "
                "`---` or `+++` lines), so there is no recipe to convert"
            )
        text = match[1]
    loader = None
    try:
        loader = SparseMLLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        reason = getattr(error, "problem", None) or " ".join(str(error).split())
        raise ConversionError(f"{where}: invalid YAML: {reason}") from None
    finally:
        if loader is not None:
            loader.dispose()


MAX_VALUES = 100_000  # a recipe is small; aliases must not expand it without bound


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse a document that expands (through aliases) past `MAX_VALUES` values or into
    itself, before anything walks it."""
    stack, seen = [(root, ())], 0
    while stack:
        node, ancestors = stack.pop()
        seen += 1
        if seen > MAX_VALUES or id(node) in ancestors:
            what = "refers to itself" if seen <= MAX_VALUES else f"has over {MAX_VALUES} values"
            raise ConversionError(f"{source}: the YAML {what} (through aliases)")
        inner = (*ancestors, id(node))
        if isinstance(node, yaml.MappingNode):
            stack += [(child, inner) for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(child, inner) for child in node.value]


@dataclass(frozen=True)
class Number:
    """A numeric field: its value, and when the source computed it from variables, the
    jinja2 expression and every variable it depends on (directly or through others). An
    expression that calls one of eval's functions has no jinja2 `expression`: it is evaluated
    into the recipe, and so are the variables it reads (`names`)."""

    value: int | float
    expression: str | None = None
    names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Variable:
    """A recipe variable: its value, and the jinja2 expression if it was `eval(...)`."""

    name: str
    value: Any
    expression: str | None
    names: frozenset[str]  # every variable it depends on, directly or through others


def is_eval(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("eval(") and value.endswith(")")


def evaluate_variables(top: dict[str, Any], source: str) -> dict[str, Variable]:
    """The recipe's variables, in an order where each uses only those before it (SparseML
    lets a variable use any other; acdc's jinja2 variables use the ones declared before)."""
    pending = dict(top)
    known: dict[str, Variable] = {}
    while pending:
        progressed = False
        for name, value in list(pending.items()):
            if is_eval(value):
                tree = parse_expression(value[5:-1], f"variable `{name}`", source)
                used = names_in(tree)
                if used - known.keys() - {name} - pending.keys():
                    missing = sorted(used - known.keys() - pending.keys())
                    raise ConversionError(
                        f"{source}: variable `{name}` ({value}) uses {', '.join(missing)}, "
                        "which the recipe does not define"
                    )
                if used - known.keys():
                    continue
                number = _number(tree, known, f"variable `{name}`", source)
                known[name] = Variable(name, number.value, number.expression, number.names)
            else:
                known[name] = Variable(name, value, None, frozenset())
            del pending[name]
            progressed = True
        if not progressed:
            raise ConversionError(
                f"{source}: the variables {', '.join(sorted(pending))} use each other in a "
                "cycle, so none of them has a value"
            )
    return known


def resolve(value: Any, variables: dict[str, Variable], where: str, source: str) -> Any:
    """A modifier field's value: `eval(name)` of a non-numeric variable is that variable's
    value (a `params` list, say); other `eval(...)` and plain numbers become `Number`s."""
    if is_eval(value):
        inner = value[5:-1].strip()
        if inner in variables and not is_number(variables[inner].value):
            return variables[inner].value
        return _number(parse_expression(inner, where, source), variables, where, source)
    if is_number(value):
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite:
            raise ConversionError(f"{source}: {where}: {value!r} is not a finite number")
        return Number(value)
    if isinstance(value, list):
        return [resolve(item, variables, where, source) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, variables, where, source) for key, item in value.items()}
    return value


def _number(tree: ast.Expression, variables: dict[str, Variable], what: str, source: str) -> Number:
    """A parsed expression's `Number`: its value and, for arithmetic over variables, the
    jinja2 expression (Python's arithmetic syntax is jinja2's) and the variables behind it."""
    value = evaluate(tree, {n: v.value for n, v in variables.items()}, what, source)
    names = names_in(tree)
    if not names:
        return Number(value)
    closure = frozenset(names).union(*(variables[n].names for n in names))
    if has_call(tree) or any(variables[n].expression is None and variables[n].names for n in names):
        return Number(value, None, closure)
    return Number(value, ast.unparse(tree.body), closure)


class Fields:
    """Typed access to one modifier's fields (variables resolved); remembers which were read,
    so the rest can be reported, and which variables the schedule consumed (`frozen`)."""

    def __init__(
        self, modifier: Modifier, variables: dict[str, Variable], source: str, frozen: set[str]
    ) -> None:
        self.modifier, self.source, self.frozen = modifier, source, frozen
        self._values = {
            key: resolve(value, variables, f"{modifier.where} `{key}`", source)
            for key, value in modifier.fields.items()
        }
        self._read: set[str] = set()
        for value in self._values.values():
            if isinstance(value, Number) and value.expression is None:
                frozen.update(value.names)  # evaluated into the recipe, with what it reads

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def fail(self, message: str) -> ConversionError:
        return ConversionError(f"{self.source}: {self.modifier.where}: {message}")

    def value(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self._values.get(key, default)

    def number(self, key: str, default: float | None = None, *, freeze: bool = True) -> Number:
        """A numeric field (`default` when absent; required when there is none). Its
        variables count as consumed unless `freeze` is False."""
        self._read.add(key)
        if key not in self._values:
            if default is None:
                raise self.fail(f"`{key}` is required")
            return Number(default)
        value = self._values[key]
        if not isinstance(value, Number):
            raise self.fail(f"`{key}` must be a number, got {value!r}")
        if freeze:
            self.frozen.update(value.names)
        return value

    def sparsity(self, key: str, *, allow_zero: bool = False) -> Number:
        """A required sparsity: in (0, 1), or [0, 1) with `allow_zero`; its variables are
        not counted as consumed (the caller decides)."""
        number = self.number(key, freeze=False)
        if not (0 <= number.value < 1 and (allow_zero or number.value > 0)):
            low = "0 <=" if allow_zero else "0 <"
            raise self.fail(f"`{key}` must be a sparsity, {low} s < 1; got {number.value}")
        return number

    def whole(self, key: str, default: int | None = None) -> int:
        """A field that must hold a whole number of epochs."""
        value = self.number(key, default).value
        if float(value) != int(value):
            raise self.fail(f"`{key}` must be a whole number of epochs, got {value}")
        return int(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.fail(f"`{key}` must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.value(key, default)
        if value not in choices:
            raise self.fail(
                f"`{key}` is {value!r}; the conversion knows {', '.join(map(repr, choices))}"
            )
        return value

    def unread(self) -> list[str]:
        return [key for key in self._values if key not in self._read]
