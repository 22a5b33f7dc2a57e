"""The documentation stays readable and connected: no page of docs/ or the README over
15,000 characters, and every relative link (the CHANGELOG's too) reaches a file and, with
an #anchor, a heading of it (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: the pages a reader reads: the README, the changelog and every page of docs/
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]
#: the most characters a page may have: split a longer one by topic, history to CHANGELOG.md
MAX_CHARS = 15_000
#: [text](target) links and ![alt](target) images of a markdown page
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+ (.*)$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces as
    dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of `page`'s headings; a repeated heading's later ones get -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(page.read_text()):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def test_the_slug_rule() -> None:
    assert slug("When a device dies, and when it comes back") == (
        "when-a-device-dies-and-when-it-comes-back"
    )
    assert slug("2. EASGD's elasticity alpha (Lemma 1)") == "2-easgds-elasticity-alpha-lemma-1"
    assert slug("`fedcoop run` and zeta_tau") == "fedcoop-run-and-zeta_tau"


def test_the_pages_include_the_changelog_and_the_docs() -> None:
    assert (ROOT / "CHANGELOG.md").is_file() and len(PAGES) > 10


#: the pages a reader reads through (the CHANGELOG is a record that grows: it is searched,
#: not read, and only its links are checked)
READ_PAGES = [p for p in PAGES if p.name != "CHANGELOG.md"]


@pytest.mark.parametrize("page", READ_PAGES, ids=lambda p: p.name)
def test_no_page_is_over_fifteen_thousand_characters(page: Path) -> None:
    size = len(page.read_text())
    assert size <= MAX_CHARS, (
        f"{page.relative_to(ROOT)} has {size:,} characters, over {MAX_CHARS:,}: split it by "
        "topic or move history to CHANGELOG.md"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_heading(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name} links to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name} links to {target}: no such heading"
