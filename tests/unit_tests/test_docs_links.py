"""Every relative link and image in README.md, CONTRIBUTING.md and docs/ leads somewhere.

A link to a file must name one that exists (relative to the page); a link to a heading of a
Markdown page (``page.md#anchor``, or ``#anchor`` on the same page) must name one of its
headings, slugged as GitHub and the docs site (Python-Markdown's toc) slug them. External
links (``https:``, ``mailto:``) are not checked: the tests run offline.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")],
    key=str,
)

# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional
# "title" after it is left out). Reference-style links are not used in these pages.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`+[^`]*`+")


def _prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code blanked out."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(_INLINE_CODE.sub("", line))
    return lines


def links(text: str) -> list[str]:
    """The link and image targets of a Markdown text, outside code."""
    return [m.group(1) for line in _prose_lines(text) for m in _LINK.finditer(line)]


def _plain(heading: str) -> str:
    """A heading's text as a reader sees it: no links' targets, no emphasis or code marks."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return heading.replace("`", "").replace("*", "")


def _slug_github(heading: str) -> str:
    text = _plain(heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _slug_toc(heading: str) -> str:
    # Python-Markdown's toc.slugify, which mkdocs uses.
    text = unicodedata.normalize("NFKD", _plain(heading)).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(text: str) -> set[str]:
    """Every anchor a heading of the text gets, in either slug style."""
    found: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else _HEADING.match(line)
        if heading:
            found |= {_slug_github(heading.group(1)), _slug_toc(heading.group(1))}
    return found


def broken_links(page: Path) -> list[str]:
    """What is wrong with the page's relative links, one line per broken link."""
    problems = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto: ...: not checked offline
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{page.name}: {target}: no file {path_part}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{page.name}: {target}: {dest.name} has no heading #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_pages_are_there() -> None:
    names = {str(p.relative_to(ROOT)) for p in PAGES}
    assert {"README.md", "CONTRIBUTING.md", "docs/index.md", "docs/architecture.md"} <= names


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The turn record\n")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine too](other.md#the-turn-record) ![ok](pic.png) [here](#page)\n"
        "[web](https://example.org/nowhere.md) `[in code](missing.md)`\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[gone](missing.md) ![gone](img/missing.png) [bad anchor](other.md#no-such) [x](#nope)\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md: no file missing.md",
        "page.md: img/missing.png: no file img/missing.png",
        "page.md: other.md#no-such: other.md has no heading #no-such",
        "page.md: #nope: page.md has no heading #nope",
    ]


def test_headings_slug_as_github_and_the_docs_site_do() -> None:
    text = "## Benchmarks (`make bench`)\n## The run's `Context`\n"
    assert {"benchmarks-make-bench", "the-runs-context"} <= anchors(text)
