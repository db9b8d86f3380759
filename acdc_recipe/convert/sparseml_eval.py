"""SparseML's `eval(...)`, checked and evaluated here node by node, never executed.

SparseML evaluates a recipe's `eval(...)` strings with `restricted_eval`
(sparseml/utils/restricted_eval.py): numbers, variable names, `+ - * / // % **`, unary minus
and calls of `abs`, `float`, `int`, `min`, `max` and `round`. The same subset is accepted here;
anything else is an error naming the variable or field. Arithmetic becomes a jinja2
expression (a recipe variable the user can still `--set`); an expression with a call is
evaluated into the recipe (`has_call`), since jinja2 spells those functions differently.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from acdc_recipe.convert.report import ConversionError

OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "float": float,
    "int": int,
    "min": min,
    "max": max,
    "round": round,
}
ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Call, ast.keyword,
           *OPERATORS, *UNARY)  # fmt: skip
SUBSET = (
    "numbers, variables, + - * / // % **, parentheses and abs, float, int, min, max, round "
    "(SparseML's restricted_eval)"
)


def parse_expression(text: str, what: str, source: str) -> ast.Expression:
    """`text` parsed as an expression of SparseML's eval subset, else a `ConversionError`."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        raise ConversionError(f"{source}: {what}: eval({text}) is not a valid expression") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and is_number(node.value):
            continue
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        ):
            found = f"a call of {ast.unparse(node.func)}"
        elif isinstance(node, ast.keyword) and node.arg is None:
            found = "**"
        elif not isinstance(node, ALLOWED):
            found = type(node).__name__
        else:
            continue
        raise ConversionError(
            f"{source}: {what}: eval({text}) is outside SparseML's eval ({found} found); only "
            f"{SUBSET} are evaluated"
        )
    return tree


def names_in(tree: ast.Expression) -> set[str]:
    """The variables an expression reads (function names excluded)."""
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def has_call(tree: ast.Expression) -> bool:
    return any(isinstance(node, ast.Call) for node in ast.walk(tree))


def evaluate(
    tree: ast.Expression, values: Mapping[str, Any], what: str, source: str
) -> int | float:
    """The finite real value of a parsed expression, `values` giving its variables."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            found = values.get(node.id)
            if node.id not in values or not is_number(found):
                kind = "not defined" if node.id not in values else "not a number"
                raise ConversionError(f"{source}: {what}: `{node.id}` is {kind}")
            return found
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.Call):
            arguments = [value(a) for a in node.args]
            keywords = {k.arg: value(k.value) for k in node.keywords if k.arg is not None}
            return FUNCTIONS[node.func.id](*arguments, **keywords)  # type: ignore[attr-defined]
        left, right = value(node.left), value(node.right)
        if isinstance(node.op, ast.Pow):
            result = float(left) ** float(right)  # floats: a huge power overflows at once
            if isinstance(left, int) and isinstance(right, int) and right >= 0:
                return int(result) if abs(result) < 2**53 else result
            return result
        return OPERATORS[type(node.op)](left, right)

    try:
        result = value(tree.body)
        finite = is_number(result) and math.isfinite(result)
    except ZeroDivisionError:
        raise ConversionError(f"{source}: {what}: cannot evaluate: division by zero") from None
    except (OverflowError, RecursionError):
        raise ConversionError(
            f"{source}: {what}: cannot evaluate: the value is too large"
        ) from None
    except (TypeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(f"{source}: {what}: cannot evaluate: {reason}") from None
    if not finite:
        raise ConversionError(f"{source}: {what}: the expression has no finite real value")
    return result


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
