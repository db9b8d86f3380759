"""A jinja2 sandbox whose work is bounded, whatever a recipe's templates ask for.

Templates are short arithmetic over a few variables; anything far beyond that is a mistake
or an attack, and must end in a located error quickly rather than hang or exhaust memory.
Every render gets a fresh `Budget`:

- loop iterations and `range` items, together at most `MAX_ITERATIONS`;
- every string, list or output at most `MAX_SIZE` characters or items, checked *before* the
  operations that could make a huge one in a single step (`*`, `+`, `%`, `~`, `**` on
  integers, width and count arguments of string methods and filters);
- every integer at most `MAX_INT_BITS` bits;
- `MAX_WORK`: the sizes of everything computed, summed, so many cheap steps are bounded too.

A broken bound raises `TemplateBoundError` naming it. Statements that need a loader
(`include`, `import`, `extends`) fail as in any loader-less environment; the `random` filter
is removed (a recipe resolves the same way every time).
"""

from __future__ import annotations

import contextvars
import math
import re
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_ITERATIONS = 100_000
MAX_SIZE = 100_000
MAX_INT_BITS = 256
MAX_WORK = 10_000_000

_NUMBERS_IN_SPEC = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")


class TemplateBoundError(ValueError):
    """A template asked for more work than a recipe ever needs; the message names the bound."""


@dataclass
class Budget:
    iterations: int = 0
    work: int = 0

    def iterate(self, count: int = 1) -> None:
        self.iterations += count
        if self.iterations > MAX_ITERATIONS:
            raise TemplateBoundError(
                f"the template runs more than {MAX_ITERATIONS:,} loop iterations and range items"
            )

    def charge(self, value: Any) -> Any:
        size = _size(value)
        if size > MAX_SIZE:
            raise TemplateBoundError(
                f"the template builds a value of {size:,} characters or items "
                f"(at most {MAX_SIZE:,})"
            )
        self.work += size
        if self.work > MAX_WORK:
            raise TemplateBoundError(f"the template does more than {MAX_WORK:,} units of work")
        return value


_BUDGET: contextvars.ContextVar[Budget] = contextvars.ContextVar("template_budget")


def budget() -> Budget:
    return _BUDGET.get()


def run_bounded(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `function` (a template render) with a fresh budget."""
    token = _BUDGET.set(Budget())
    try:
        return budget().charge(function(*args, **kwargs))
    finally:
        _BUDGET.reset(token)


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise TemplateBoundError(
                f"the template computes an integer of {value.bit_length():,} bits "
                f"(at most {MAX_INT_BITS})"
            )
        return 1
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset, range)):
        return len(value)
    return 1


def _check_length(length: int, what: str) -> None:
    if length > MAX_SIZE:
        raise TemplateBoundError(
            f"{what} would be {length:,} characters or items long (at most {MAX_SIZE:,})"
        )


def _check_count(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
        raise TemplateBoundError(f"{what} {value:,} is above the bound of {MAX_SIZE:,}")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else 1


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        bits = right * math.log2(abs(left)) if right > 0 else 0
        if bits > MAX_INT_BITS:
            raise TemplateBoundError(
                f"{left} ** {right} has about {bits:,.0f} bits (integers are bounded to "
                f"{MAX_INT_BITS} bits)"
            )
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            _size(left), _size(right)
        elif isinstance(right, int) and isinstance(left, (str, list, tuple)):
            _check_length(len(left) * max(right, 0), "a repetition")
        elif isinstance(left, int) and isinstance(right, (str, list, tuple)):
            _check_length(len(right) * max(left, 0), "a repetition")
    elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, Sized):
        _check_length(len(left) + len(right), "a concatenation")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)


def _check_percent_format(text: str, arguments: Any) -> None:
    """Widths and precisions of a %-format, given in the text or taken from the arguments."""
    given = list(arguments) if isinstance(arguments, tuple) else [arguments]
    for match in _PERCENT_SPEC.finditer(text):
        for part in match.groups():
            if part == "*":
                _check_count(given.pop(0) if given else 0, "a format width")
            elif part is not None:
                _check_count(int(part), "a format width or precision")


def _check_brace_format(text: str) -> None:
    for number in _NUMBERS_IN_SPEC.findall(text):
        if len(number) > 6:
            raise TemplateBoundError(f"a format spec number {number[:12]}... is above the bound")
        _check_count(int(number), "a format width or precision")


def _check_call(function: Any, args: tuple, kwargs: dict) -> None:
    """Sizes a string method could produce, checked before it runs (the sandbox hands out
    `str.format` wrapped; the wrapper keeps the method as `__wrapped__`)."""
    function = getattr(function, "__wrapped__", function)
    owner, name = getattr(function, "__self__", None), getattr(function, "__name__", "")
    if not isinstance(owner, str):
        if name == "to_bytes" and args:
            _check_count(args[0], "a byte length")
        return
    values = list(args) + list(kwargs.values())
    if name in ("center", "ljust", "rjust", "zfill") and values:
        _check_count(values[0], f"the width of str.{name}")
    elif name == "expandtabs":
        _check_length(len(owner) * (values[0] if values else 8), "str.expandtabs")
    elif name == "replace" and len(values) >= 2:
        _check_replace(owner, str(values[0]), str(values[1]), values[2] if len(values) > 2 else -1)
    elif name == "join" and args:
        items = list(args[0]) if not isinstance(args[0], Sized) else args[0]
        total = len(owner) * max(len(items) - 1, 0) + sum(_length(item) for item in items)
        _check_length(total, "str.join")
    elif name in ("format", "format_map"):
        _check_brace_format(owner)
        for value in values:
            _size(value)


def _check_replace(text: str, old: str, new: str, count: Any) -> None:
    found = (len(text) + 1) if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    _check_length(len(text) + found * max(len(new) - len(old), 0), "a replace")


def _bounded_range(*args: int) -> range:
    values = range(*args)
    budget().iterate(len(values))
    return values


def _bounded_loop(iterable: Iterable[Any]) -> Iterator[Any]:
    current = budget()
    for item in iterable:
        current.iterate()
        yield item


def _concat(*parts: Any) -> str:
    texts = [str(part) for part in parts]
    _check_length(sum(len(text) for text in texts), "a ~ concatenation")
    return budget().charge("".join(texts))


def _filter(name: str, function: Any, check: Any) -> Any:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return function(*args, **kwargs)

    bounded.__name__ = name
    for attribute in ("jinja_pass_arg",):  # keep pass_context / pass_eval_context markers
        if hasattr(function, attribute):
            setattr(bounded, attribute, getattr(function, attribute))
    return bounded


def _check_center(value: Any, width: int = 80) -> None:
    _check_count(width, "the width of center")


def _check_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    prefix = len(width) if isinstance(width, str) else width
    lines = str(value).count("\n") + 1
    _check_length(len(str(value)) + lines * max(prefix, 0), "an indent")


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_percent_format(str(value), tuple(args) if args else kwargs)


def _check_replace_filter(eval_ctx: Any, value: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_replace(str(value), str(old), str(new), -1 if count is None else count)


def _check_join(eval_ctx: Any, value: Any, separator: str = "", attribute: Any = None) -> None:
    items = list(value)
    total = len(separator) * max(len(items) - 1, 0) + sum(_length(item) for item in items)
    _check_length(total, "a join")


def _check_batch(value: Any, linecount: int, fill_with: Any = None) -> None:
    _check_count(linecount, "the batch size")


def _check_slice(value: Any, slices: int, fill_with: Any = None) -> None:
    _check_count(slices, "the number of slices")


class _Bounds(NodeTransformer):
    """Route loops, `~` and every call and filter through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = _call("_acdc_loop", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return _call("_acdc_concat", *node.nodes)

    def visit_Call(self, node: nodes.Call) -> nodes.Node:
        return _call("_acdc_charge", self.generic_visit(node))

    def visit_Filter(self, node: nodes.Filter) -> nodes.Node:
        node = self.generic_visit(node)
        return node if node.node is None else _call("_acdc_charge", node)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        node = self.generic_visit(node)
        node.nodes = [
            child if isinstance(child, nodes.TemplateData) else _call("_acdc_charge", child)
            for child in node.nodes
        ]
        return node


def _call(name: str, *arguments: nodes.Expr) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load"), list(arguments), [], None, None)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` with the bounds of this module."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, **options)
        self.globals.update(
            range=_bounded_range,
            _acdc_loop=_bounded_loop,
            _acdc_concat=_concat,
            _acdc_charge=lambda value: budget().charge(value),
        )
        self.filters.pop("random", None)
        for name, check in (
            ("center", _check_center),
            ("indent", _check_indent),
            ("format", _check_format),
            ("replace", _check_replace_filter),
            ("join", _check_join),
            ("batch", _check_batch),
            ("slice", _check_slice),
        ):
            self.filters[name] = _filter(name, self.filters[name], check)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return budget().charge(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        return super()._generate(_Bounds().visit(source), *args, **kwargs)
