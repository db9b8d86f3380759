"""Pass 3: resolve the recipe's per-layer rules against the discovered parameters.

A rule's `match` is an exact name, a glob (``layer4.*.conv2``), a regex (``re:...``, matched
in full) or a module type (``type:Linear``, any class in the layer's hierarchy, or the prunable
type of the op using the weight). It is tried against both the layer name and the parameter
name, every name of a tied parameter included (``lm_head`` matches GPT-2's
``transformer.wte.weight``). Rules are tried in order and the first one that matches a
parameter decides it: for a default-prunable weight, or a transformers model's head (dense by
default, `heads.py`), it claims it; a norm, bias, embedding (tied to an output projection or
not) or other non-default parameter is claimed only when that rule says ``include: true``. A
rule that claims nothing is a `CompileError`.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from acdc_recipe.compiler.discovery import Candidate
from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.language.schema import Rule

Matcher = Callable[[Candidate], bool]


@dataclass(frozen=True)
class Resolution:
    """Which parameters are pruned or kept dense, and which rule (None: the defaults) decided."""

    pruned: dict[str, int | None]  # canonical name -> rule index, in candidate order
    dense: dict[str, int]  # default-prunable weights a `dense: true` rule keeps dense


def compile_match(text: str, index: int) -> Matcher:
    """A predicate over candidates for one rule's `match` text."""
    if text.startswith("type:"):
        type_name = text[5:].strip()
        return lambda c: type_name in c.types
    if text.startswith("re:"):
        try:
            pattern = re.compile(text[3:])
        except re.error as error:
            raise CompileError(
                f"rule {index} has an invalid regular expression {text[3:]!r}: {error}",
                _match_path(index),
            ) from None
        return lambda c: any(pattern.fullmatch(n) for n in _names(c))
    if any(ch in text for ch in "*?["):
        return lambda c: any(fnmatch.fnmatchcase(n, text) for n in _names(c))
    return lambda c: text in _names(c)


def _names(candidate: Candidate) -> tuple[str, ...]:
    """The layer and parameter names a rule is matched against (every name of a tied one)."""
    names = [candidate.layer, candidate.name]
    for alias in candidate.aliases:
        names += [alias.rpartition(".")[0], alias]
    return tuple(names)


def is_default_prunable(candidate: Candidate, prunable: Sequence[str]) -> bool:
    """A weight applied by a layer kind in `prunable` (never a bias, norm or embedding)."""
    return candidate.role == "weight" and candidate.kind in prunable


def resolve_rules(
    rules: Sequence[Rule], candidates: Sequence[Candidate], prunable: Sequence[str]
) -> Resolution:
    """Apply `rules` (first match wins) to `candidates`; raise one `CompileError` naming every
    rule that claims nothing."""
    matchers = [compile_match(rule.match, i) for i, rule in enumerate(rules)]
    pruned: dict[str, int | None] = {}
    dense: dict[str, int] = {}
    claimed_by: dict[str, int] = {}
    for candidate in candidates:
        default = is_default_prunable(candidate, prunable)
        head = candidate.role == "head" and candidate.kind in prunable  # claimed by any rule
        index = next((i for i, m in enumerate(matchers) if m(candidate)), None)
        if index is None:
            if default:
                pruned[candidate.name] = None
            continue
        rule = rules[index]
        if not (default or head) and not rule.include:
            continue
        claimed_by[candidate.name] = index
        if rule.dense:
            if default or head:
                dense[candidate.name] = index
        else:
            pruned[candidate.name] = index
    claiming = set(claimed_by.values())
    unclaimed = [
        (
            _unclaimed_message(index, rule, matchers, candidates, claimed_by, prunable),
            _match_path(index),
        )
        for index, rule in enumerate(rules)
        if index not in claiming
    ]
    if unclaimed:
        raise CompileError.of_all(unclaimed)
    return Resolution(pruned, dense)


def _unclaimed_message(
    index: int,
    rule: Rule,
    matchers: list[Matcher],
    candidates: Sequence[Candidate],
    claimed_by: dict[str, int],
    prunable: Sequence[str],
) -> str:
    head = f"rule {index} (match {rule.match!r}) "
    matched = [c for c in candidates if matchers[index](c)]
    earlier = [c for c in matched if claimed_by.get(c.name, index) < index]
    if earlier:
        first = earlier[0]
        return (
            head + f"only matches parameters that earlier rules already claim ({first.name!r} "
            f"is claimed by rule {claimed_by[first.name]}); the first matching rule wins, so "
            "move this rule up or narrow the earlier one."
        )
    if matched:
        shown = ", ".join(f"{c.name} ({c.op})" for c in matched[:4])
        return (
            head + f"only matches parameters that are not pruned by default: {shown}. Norms, "
            f"biases, embeddings (also when tied to an output layer) and layers outside "
            f"sparsity.prunable ({', '.join(prunable)}) are never pruned unless a rule sets "
            "include: true; "
            + (
                "a dense rule for them is not needed, remove it."
                if rule.dense
                else "add include: true or remove the rule."
            )
        )
    return (
        head
        + "matches no layer or parameter in this model. "
        + _near_misses(rule.match, candidates)
    )


def _near_misses(text: str, candidates: Sequence[Candidate]) -> str:
    if text.startswith("type:"):
        types = sorted({t for c in candidates if c.role in ("weight", "head") for t in c.types})
        close = difflib.get_close_matches(text[5:], types, n=5, cutoff=0.5)
        return f"Closest types: {', '.join(close or types[:8])}."
    key = text[3:] if text.startswith("re:") else text
    layers = list(dict.fromkeys(c.layer for c in candidates if c.role in ("weight", "head")))
    names = layers + [c.name for c in candidates]
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
    if close:
        return f"Did you mean {', '.join(repr(c) for c in close)}?"
    return f"Layers with prunable weights include: {', '.join(repr(n) for n in layers[:6])}."


def _match_path(index: int) -> tuple[str | int, ...]:
    return ("sparsity", "rules", index, "match")
