"""Recipe text -> plain YAML data and the line and column of every key, with bounded work.

A recipe is a few hundred values and a few kilobytes; text far beyond that is a mistake or an
attack, and must end in a located error quickly, before anything is built from it:

- the token stream is scanned first (by libyaml when PyYAML has it): nesting deeper than
  `MAX_DEPTH`, more than `MAX_VALUES` values and more than `MAX_CHARACTERS` characters in
  them stop the scan where they are reached;
- the composed nodes are measured as they would expand (an alias repeats what it names,
  so a short file can stand for gigabytes): more than `MAX_VALUES` values or `MAX_CHARACTERS`
  characters of text is an error at the innermost list or mapping that goes past the bound,
  found without expanding anything;
- only then are the nodes walked (for positions and per-value checks) and converted, by the
  safe loader.
"""

from __future__ import annotations

import re

import yaml

from acdc_recipe.errors import KeyPath, Problem, RecipeError

Marks = dict[KeyPath, tuple[int, int]]

MAX_DEPTH = 32  # lists and mappings inside each other; a recipe needs fewer than ten
MAX_VALUES = 20_000  # scalars, lists, mappings and aliases; the shipped recipes have under 700
MAX_CHARACTERS = 100_000  # of text in all values, aliases expanded; recipes have a few thousand
MAX_INT_DIGITS = 40  # an integer literal of more digits is a mistake (and slow to convert)
_OPENING = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
            yaml.BlockMappingStartToken)  # fmt: skip
_CLOSING = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)
_VALUES = (*_OPENING, yaml.ScalarToken, yaml.AliasToken)
_SCANNER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the same tokens, libyaml's speed
_SURROGATE = re.compile("[\ud800-\udfff]")


class _TooLarge(ValueError):
    def __init__(self, message: str, line: int, column: int, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.line, self.column, self.path = line, column, path


def parse_yaml(text: str, source: str) -> tuple[dict, Marks]:
    """The recipe's data (a mapping) and the (line, column) of every key path in it; every
    problem found raises one `RecipeError` at its place in `source`."""
    marks: Marks = {}
    problems: list[Problem] = []
    try:
        _check_tokens(text)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(node)
                _index_marks(node, (), marks, problems)
            data = None if node is None or problems else loader.construct_document(node)
        finally:
            loader.dispose()
    except _TooLarge as error:
        problem = Problem(str(error), error.path, error.line, error.column)
        raise RecipeError([problem], source) from None
    except yaml.YAMLError as error:
        raise RecipeError([_yaml_problem(error, text)], source) from None
    if problems:
        raise RecipeError(problems, source)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise RecipeError(
            [Problem(f"a recipe is a YAML mapping of keys, found {found}", (), 1, 1)], source
        )
    return data, marks


def _check_tokens(text: str) -> None:
    """Refuse deep nesting (the YAML composer would recurse into it) and too many values from
    the token stream. Text libyaml's scanner cannot read is scanned again by PyYAML's (libyaml
    stops at its own nesting limit); what that one cannot read is left to the loader, which
    says where and why in its own words."""
    try:
        _scan(text, _SCANNER)
    except yaml.YAMLError:
        if _SCANNER is yaml.SafeLoader:
            return
        try:
            _scan(text, yaml.SafeLoader)
        except yaml.YAMLError:
            return


def _scan(text: str, loader: type) -> None:
    scanner = loader(text)
    try:
        depth = values = characters = 0
        while not scanner.check_token(yaml.StreamEndToken):
            token = scanner.get_token()
            if isinstance(token, _VALUES):
                values += 1
                if values > MAX_VALUES:
                    raise _TooLarge(
                        f"the recipe has more than {MAX_VALUES:,} values (a recipe has a few "
                        "hundred)",
                        *_position(token),
                    )
            if isinstance(token, yaml.ScalarToken):
                characters += len(token.value)
                if characters > MAX_CHARACTERS:
                    raise _TooLarge(
                        f"the recipe's values hold more than {MAX_CHARACTERS:,} characters of "
                        "text by here (a recipe has a few thousand)",
                        *_position(token),
                    )
            if isinstance(token, _OPENING):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _TooLarge(
                        f"lists and mappings are nested more than {MAX_DEPTH} levels deep here; "
                        "a recipe needs only a few levels",
                        *_position(token),
                    )
            elif isinstance(token, _CLOSING):
                depth -= 1
    finally:
        scanner.dispose()


def _position(token: yaml.Token | yaml.Node) -> tuple[int, int]:
    return token.start_mark.line + 1, token.start_mark.column + 1


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose values, aliases expanded, are more than `MAX_VALUES` or hold
    more than `MAX_CHARACTERS` characters, at the innermost list or mapping past the bound;
    sizes are summed over the composed nodes once each, nothing is expanded."""
    sizes: dict[int, tuple[int, int]] = {}

    def size(node: yaml.Node) -> tuple[int, int]:
        if id(node) not in sizes:
            sizes[id(node)] = (1, 0)  # an alias of an enclosing node: `_index_marks` says so
            values, characters = 1, 0
            for child in _children(node):
                child_values, child_characters = size(child)
                values, characters = values + child_values, characters + child_characters
            if isinstance(node, yaml.ScalarNode):
                characters = len(node.value)
            sizes[id(node)] = (values, characters)
        return sizes[id(node)]

    def over(node: yaml.Node) -> bool:
        values, characters = size(node)
        return values > MAX_VALUES or characters > MAX_CHARACTERS

    if not over(root):
        return
    node, path = root, ()
    while True:
        inner = next(((k, c) for k, c in _keyed_children(node) if over(c)), None)
        if inner is None:
            break
        key, node = inner
        path = (*path, key)
    values, characters = size(node)
    what = (
        f"{values:,} values (at most {MAX_VALUES:,})"
        if values > MAX_VALUES
        else f"{characters:,} characters of text (at most {MAX_CHARACTERS:,})"
    )
    raise _TooLarge(
        f"this value expands to {what}; a recipe is a few kilobytes (YAML aliases, *name, "
        "repeat what they refer to)",
        *_position(node),
        path,
    )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _keyed_children(node: yaml.Node) -> list[tuple[str | int, yaml.Node]]:
    """Each child with its key in the recipe's paths (a mapping's keys stand for themselves)."""
    if isinstance(node, yaml.MappingNode):
        found: list[tuple[str | int, yaml.Node]] = []
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            found += [(name, key), (name, value)]
        return found
    return list(enumerate(_children(node)))


def _yaml_problem(error: yaml.YAMLError, text: str) -> Problem:
    """A YAML error located at its line and column, in words a person can act on."""
    if isinstance(error, yaml.reader.ReaderError):
        before = text[: error.position]
        line, column = before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1
        return Problem(
            f"invalid YAML: the character #x{error.character:04x} is not allowed in a recipe "
            "(control characters and other special characters; write it as an escape in a "
            "double-quoted string if you need it)",
            (),
            line,
            column,
        )
    mark = getattr(error, "problem_mark", None)
    reason = getattr(error, "problem", None) or str(error)
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Problem(f"invalid YAML: {reason}", (), line, column)


def _index_marks(
    node: yaml.Node,
    path: KeyPath,
    marks: Marks,
    problems: list[Problem],
    ancestors: tuple[int, ...] = (),
) -> None:
    line, column = _position(node)
    if id(node) in ancestors:
        problems.append(Problem("a YAML alias refers to itself (recursive)", path, line, column))
        return
    marks[path] = (line, column)
    inner = (*ancestors, id(node))
    if isinstance(node, yaml.ScalarNode):
        problem = _scalar_problem(node)
        if problem is not None:
            problems.append(Problem(problem, path, line, column))
    elif isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key_mark = _position(key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    Problem("a key must be a plain name, not a list or mapping", path, *key_mark)
                )
                continue
            key = key_node.value
            if (problem := _scalar_problem(key_node)) is not None:
                problems.append(Problem(problem, path, *key_mark))
                continue
            child = (*path, key)
            if key in seen:
                problems.append(Problem(f"duplicate key {key!r}", child, *key_mark))
            seen.add(key)
            _index_marks(value_node, child, marks, problems, inner)
            marks[child] = key_mark
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_marks(item, (*path, index), marks, problems, inner)


def _scalar_problem(node: yaml.ScalarNode) -> str | None:
    """What is wrong with one YAML value before it is converted, or None."""
    if _SURROGATE.search(node.value):
        return (
            "this text holds a lone surrogate escape (such as \\ud800), which is not Unicode text"
        )
    if node.tag == "tag:yaml.org,2002:int":
        digits = sum(ch.isdigit() for ch in node.value)
        if digits > MAX_INT_DIGITS:
            return (
                f"an integer of {digits} digits; numbers in a recipe have at most "
                f"{MAX_INT_DIGITS} digits"
            )
    return None
