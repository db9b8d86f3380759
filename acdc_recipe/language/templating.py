"""Recipe variables: sandboxed jinja2 over string values, undefined names are errors, and
every render's work bounded (`acdc_recipe.language.sandbox`).

A string that is one whole expression (``"{{ sparsity }}"``) becomes the expression's native
value (a float stays a float, a list a list); any other templated string renders to text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import jinja2.meta
import yaml

from acdc_recipe.language.sandbox import BoundedSandbox, TemplateBoundError, run_bounded

_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
_ENV = BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False)


class TemplateProblem(ValueError):
    """A template that failed to evaluate; the message says why."""


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def render_value(text: str, variables: Mapping[str, Any]) -> Any:
    """Evaluate one templated string against `variables`."""
    try:
        if match := _WHOLE_EXPRESSION.match(text):
            expression = _ENV.compile_expression(match["expr"], undefined_to_none=False)
            return _reject_undefined(run_bounded(expression, **variables))
        return run_bounded(_ENV.from_string(text).render, **variables)
    except TemplateBoundError as error:
        raise TemplateProblem(f"template stopped at a bound: {error}") from None
    except jinja2.UndefinedError as error:
        known = ", ".join(sorted(variables)) or "none"
        raise TemplateProblem(f"{error.message} (variables: {known})") from None
    except jinja2.TemplateSyntaxError as error:
        raise TemplateProblem(f"template syntax error: {error.message}") from None
    except jinja2.exceptions.SecurityError as error:
        raise TemplateProblem(f"template not allowed: {error}") from None
    except Exception as error:  # arithmetic and type errors inside user expressions
        raise TemplateProblem(f"template failed: {type(error).__name__}: {error}") from None


def render_tree(
    tree: Any,
    variables: Mapping[str, Any],
    on_problem: Callable[[tuple, str], None],
    path: tuple = (),
) -> Any:
    """Render every templated string in a YAML tree; report failures through `on_problem`."""
    if isinstance(tree, dict):
        return {k: render_tree(v, variables, on_problem, (*path, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [render_tree(v, variables, on_problem, (*path, i)) for i, v in enumerate(tree)]
    if is_template(tree):
        try:
            return render_value(tree, variables)
        except TemplateProblem as problem:
            on_problem(path, str(problem))
    return tree


def referenced_names(tree: Any) -> set[str]:
    """The variable names the templates in a YAML tree use (unparsable templates use none)."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif is_template(node):
            try:
                names |= jinja2.meta.find_undeclared_variables(_ENV.parse(node))
            except jinja2.TemplateSyntaxError:
                pass  # rendering reports it
    return names


def parse_typed(text: str) -> Any:
    """A `--set` value with its YAML type: '0.95' -> 0.95, 'true' -> True, '[1, 2]' -> [1, 2]."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _reject_undefined(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, (list, tuple)):
        return type(value)(_reject_undefined(v) for v in value)
    if isinstance(value, dict):
        return {k: _reject_undefined(v) for k, v in value.items()}
    return value
