"""`RecipeError`: every problem found in a recipe, each with its file, line, column and key."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located as precisely as the source allows."""

    message: str
    path: KeyPath = ()
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    suggestion: str | None = None
    origin: str | None = None  # where the value came from when not the file: "--set train.seed"

    def render(self, source: str) -> str:
        where = source
        if self.origin is not None:
            where = self.origin
        elif self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        key = f" at `{format_path(self.path)}`" if self.path else ""
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        return f"{where}{key}: {self.message}{hint}"


class UserError(Exception):
    """Base of every error caused by what the user gave (recipe, model, data, checkpoint, flags).

    The CLI prints its message as a paragraph and exits 2, never a traceback.
    """


class RecipeError(UserError, ValueError):
    """A recipe that cannot be loaded: its str() is a ready-to-print paragraph."""

    def __init__(self, problems: Sequence[Problem], source: str = "<recipe>") -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.problems)
        head = f"Recipe {self.source} has {count} problem{'s' if count != 1 else ''}:"
        return "\n".join([head, *(f"  - {p.render(self.source)}" for p in self.problems)])


def format_path(path: KeyPath) -> str:
    """('schedule', 'phases', 2, 'sparse') -> 'schedule.phases[2].sparse'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to `word`, quoted, or None when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return repr(close[0]) if close else None


def first_line(error: BaseException, fallback: str | None = None) -> str:
    """The first line of an exception's message (for a one-paragraph error), else `fallback`,
    else the exception's type name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else fallback or type(error).__name__
