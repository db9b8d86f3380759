"""Every relative link in the README and docs/ points to a file that exists, and every `#anchor`
to a heading of its target, as GitHub names headings; every docs page is reachable from the
README. Web (http, https, mailto) links are not fetched."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)((?:(?!\n\n).)+?)\1", re.DOTALL)  # within a paragraph
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_LINK_DEFINITION = re.compile(
    r"^ {0,3}\[[^\]]+\]:[ \t]*<?(\S+?)>?(?:[ \t]+\"[^\"]*\")?[ \t]*$", re.M
)
_WEB = re.compile(r"^(https?:|mailto:)", re.IGNORECASE)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{_shown(self.page)}:{self.line}: ({self.target})"


def _prose(text: str) -> str:
    """`text` with fenced code blocks and HTML comments blanked out, line numbers kept."""
    text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lower-cased, every character but
    letters, digits, `_`, `-` and spaces removed, spaces turned into `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = _CODE_SPAN.sub(lambda m: m.group(2).strip(), text)
    text = text.replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for line in _prose(text).splitlines():
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def links(page: Path) -> list[Link]:
    """The links of a page: inline links and images (their text may span lines), and link
    definitions; none inside code."""
    prose = _CODE_SPAN.sub(
        lambda m: re.sub(r"[^\n]", " ", m.group(0)), _prose(page.read_text(encoding="utf-8"))
    )
    found = [(m.start(), m.group(2)) for m in _INLINE_LINK.finditer(prose)]
    found += [(m.start(), m.group(1)) for m in _LINK_DEFINITION.finditer(prose)]
    return [Link(page, prose.count("\n", 0, start) + 1, target) for start, target in sorted(found)]


def problem(link: Link) -> str | None:
    """Why a relative link is broken, or None when it is not (web links are not checked)."""
    if not link.target or _WEB.match(link.target):
        return None if link.target else "empty link"
    path_part, _, fragment = link.target.partition("#")
    target = (link.page.parent / unquote(path_part)).resolve() if path_part else link.page
    if not target.exists():
        return f"{path_part} does not exist"
    if not fragment:
        return None
    if target.suffix != ".md" or not target.is_file():
        return f"#{fragment} on {path_part}, which is no Markdown page"
    if unquote(fragment) not in anchors(target.read_text(encoding="utf-8")):
        return f"{_shown(target)} has no heading with the anchor #{fragment}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path):
    broken = [f"{link}: {why}" for link in links(page) if (why := problem(link))]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = {README}, [README]
    while todo:
        for link in links(todo.pop()):
            path_part = link.target.partition("#")[0]
            if not path_part or _WEB.match(path_part):
                continue
            target = (link.page.parent / unquote(path_part)).resolve()
            if target.suffix == ".md" and target.is_file() and target not in reached:
                reached.add(target)
                todo.append(target)
    orphans = [str(p.relative_to(ROOT)) for p in PAGES if p.resolve() not in reached]
    assert not orphans, f"no link leads from README.md to {', '.join(orphans)}"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("What `acdc run` leaves behind", "what-acdc-run-leaves-behind"),
        (
            "Training: sparse-phase step time / dense-phase step time",
            "training-sparse-phase-step-time--dense-phase-step-time",
        ),
        (
            "Sparse phases on sparse kernels (`train.sparse_kernels`)",
            "sparse-phases-on-sparse-kernels-trainsparse_kernels",
        ),
        (
            "2:4 semi-structured kernels on CUDA: not measured yet",
            "24-semi-structured-kernels-on-cuda-not-measured-yet",
        ),
        ("**1. Bold** and [a link](x.md)", "1-bold-and-a-link"),
    ],
)
def test_slugs_follow_github(heading: str, slug: str):
    assert github_slug(heading) == slug


def test_repeated_headings_get_numbered_anchors():
    text = "# Usage\n\n```\n# not a heading\n```\n\n## Usage\n\n## Usage\n"
    assert anchors(text) == {"usage", "usage-1", "usage-2"}


def test_broken_links_and_anchors_are_reported(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Present\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#present) [gone](missing.md) [bad anchor](other.md#absent)\n"
        "`[in code](missing.md)` [web](https://example.com/missing) [text over\n"
        "two lines](other.md#absent)\n"
        "```\n[fenced](missing.md)\n```\n"
        "[ref]: gone.md\n",
        encoding="utf-8",
    )
    found = links(page)
    assert [(link.line, link.target) for link in found] == [
        (1, "other.md#present"),
        (1, "missing.md"),
        (1, "other.md#absent"),
        (2, "https://example.com/missing"),
        (2, "other.md#absent"),
        (7, "gone.md"),
    ]
    problems = [problem(link) for link in found]
    assert problems[0] is None and problems[3] is None
    assert "missing.md does not exist" in problems[1]
    assert "#absent" in problems[2] and "#absent" in problems[4]
    assert "gone.md does not exist" in problems[5]
