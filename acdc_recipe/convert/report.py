"""What a conversion did, item by item: mapped exactly, approximated, or without an equivalent
in an acdc recipe; plus what the person still has to supply."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from acdc_recipe.errors import UserError

SOURCE_FORMATS = ("sparseml", "reference")
FORMAT_NAMES = {"sparseml": "SparseML recipe", "reference": "AC/DC reference-code config"}


class ConversionError(UserError):
    """A file that cannot be converted; the message is one paragraph saying why."""


@dataclass(frozen=True)
class ReportItem:
    """One statement about one part of the source (`where`: a modifier and its line, a key)."""

    where: str
    text: str

    def render(self) -> str:
        return f"{self.where}: {self.text}" if self.where else self.text


@dataclass
class ConversionReport:
    """The four lists a conversion fills; `lines()` is the text the CLI prints and the
    converted recipe carries as its header comment."""

    source: str
    source_format: str
    mapped: list[ReportItem] = field(default_factory=list)
    approximated: list[ReportItem] = field(default_factory=list)
    no_equivalent: list[ReportItem] = field(default_factory=list)
    todo: list[ReportItem] = field(default_factory=list)

    def map(self, where: str, text: str) -> None:
        self.mapped.append(ReportItem(where, text))

    def approximate(self, where: str, text: str) -> None:
        self.approximated.append(ReportItem(where, text))

    def lack(self, where: str, text: str) -> None:
        self.no_equivalent.append(ReportItem(where, text))

    def ask(self, text: str) -> None:
        self.todo.append(ReportItem("", text))

    def lines(self, width: int = 98) -> list[str]:
        out = [f"Converted from {_printable(self.source)} ({FORMAT_NAMES[self.source_format]})."]
        for title, items in (
            ("mapped", self.mapped),
            ("approximated", self.approximated),
            ("no equivalent (left out)", self.no_equivalent),
            ("to do", self.todo),
        ):
            if not items:
                continue
            out.append(f"{title}:")
            for item in items:
                out += textwrap.wrap(
                    _printable(item.render()),
                    width,
                    initial_indent="  - ",
                    subsequent_indent="    ",
                )
        return out


def listed(values: list, limit: int = 8) -> str:
    """`[10, 50, 90]`, or the first `limit` values and how many more."""
    if len(values) <= limit:
        return str(list(values))
    return f"[{', '.join(map(str, values[:limit]))}, ... ({len(values)} in all)]"


def _printable(text: str) -> str:
    """`text` with control characters escaped: it becomes comment lines of a YAML file."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
