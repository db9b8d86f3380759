"""The base of every recipe model: immutable, unknown keys are errors, numbers finite; and the
bounded field types the recipe language shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_LENGTH = 1_000_000_000  # any length, count or position, in its unit
MAX_NAME = 200  # characters of a recipe name
PositiveInt = Annotated[int, Field(gt=0, le=MAX_LENGTH)]
Count = Annotated[int, Field(ge=0, le=MAX_LENGTH)]


class Strict(BaseModel):
    """Base for every recipe model: immutable, unknown keys are errors, numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_printable(value: str, what: str) -> str:
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise ValueError(f"{what} must be printable text; it holds the character {bad!r}")
    return value
