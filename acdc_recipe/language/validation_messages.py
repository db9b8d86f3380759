"""Turn pydantic's validation errors into recipe problems a person can act on.

Pydantic locations include union tags and model names that are not keys of the YAML; the
path is walked against the data so it names only real keys. Unknown keys and misspelt
choices get a did-you-mean from the schema itself.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel

from acdc_recipe.errors import KeyPath, Problem, did_you_mean
from acdc_recipe.language.schema import PHASE_KINDS, Recipe

_QUOTED = re.compile(r"'([^']*)'")


def describe_error(error: dict, data: Any) -> Problem:
    """One pydantic error dict -> a `Problem` with a clean key path and a suggestion."""
    path = _data_path(error["loc"], data)
    kind, found = error["type"], error.get("input")
    if kind == "extra_forbidden":
        key = path[-1]
        fields = _fields_at(path[:-1], data)
        return Problem(f"unknown key {key!r}", path, suggestion=did_you_mean(str(key), fields))
    if kind == "missing":
        return Problem(f"required key `{path[-1]}` is missing", path)
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = _QUOTED.findall(expected) or [expected]  # Literal[1] is unquoted
        return Problem(
            f"expected one of {', '.join(choices)}; found {found!r}",
            path,
            suggestion=did_you_mean(str(found), choices),
        )
    if kind == "phase_kind" and isinstance(found, dict) and found:
        keys = ", ".join(map(str, found))
        return Problem(
            f"{error['msg']}; found keys {keys}",
            path,
            suggestion=did_you_mean(str(next(iter(found))), PHASE_KINDS),
        )
    message = error["msg"].removeprefix("Value error, ")
    if kind not in ("value_error", "phase_kind") and not isinstance(found, (dict, list)):
        message += f"; found {found!r}"
    return Problem(message, path)


def _data_path(loc: tuple, data: Any) -> KeyPath:
    """Keep the parts of a pydantic location that are keys or indexes of the data."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if (
            isinstance(node, dict)
            and part in node
            and (last or isinstance(node[part], (dict, list)))
        ):
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif last or isinstance(part, int):
            path.append(part)
            node = None
    return tuple(path)


def _fields_at(path: KeyPath, data: Any) -> list[str]:
    """Field names the schema allows at `path` (for did-you-mean on unknown keys)."""
    candidates: list[Any] = [Recipe]
    node = data
    for part in path:
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        nxt: list[Any] = []
        for member in (m for a in candidates for m in _expand(a)):
            if isinstance(part, str) and _is_model(member) and part in member.model_fields:
                nxt.append(member.model_fields[part].annotation)
            elif isinstance(part, int) and typing.get_origin(member) in (tuple, list):
                nxt += [arg for arg in typing.get_args(member) if arg is not Ellipsis]
        candidates = nxt
    models = [m for a in candidates for m in _expand(a) if _is_model(m)]
    if isinstance(node, dict):  # a phase item: pick the model by its kind key
        kinds = [k for k in PHASE_KINDS if k in node]
        models = [m for m in models if not kinds or kinds[0] in m.model_fields] or models
    return sorted({name for model in models for name in model.model_fields})


def _has(node: dict | list, part: str | int) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _is_model(member: Any) -> bool:
    return isinstance(member, type) and issubclass(member, BaseModel)


def _expand(annotation: Any) -> list[Any]:
    """Flatten unions, Optional and Annotated into their member types."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _expand(arg)]
    if origin is typing.Annotated:
        return _expand(typing.get_args(annotation)[0])
    return [annotation]
