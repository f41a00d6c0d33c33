"""Every relative link in README.md and docs/*.md points to a file that exists and, when it names
an anchor, to a heading of that file (anchors as GitHub renders them)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text outside fenced code blocks, where links are links."""
    return FENCE.sub("", text)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2 ... on repeats."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(_prose(text)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    prose = CODE_SPAN.sub("", _prose(page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


LINKS = [(page, target) for page in PAGES for target in relative_links(page)]


def test_the_pages_have_links() -> None:
    assert len(PAGES) > 1
    assert any(page.name == "README.md" for page, _ in LINKS)


@pytest.mark.parametrize(
    ("page", "target"), LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS]
)
def test_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    assert destination.is_file(), f"{page.relative_to(ROOT)} links to missing {path}"
    if anchor:
        known = anchors(destination.read_text(encoding="utf-8"))
        assert anchor in known, (
            f"{page.relative_to(ROOT)} links to #{anchor}, not a heading of "
            f"{destination.relative_to(ROOT)} (it has: {', '.join(sorted(known))})"
        )


def test_anchor_rules_match_github() -> None:
    text = "# `GET /ready` and `GET /models/ready?name=`\n## Text options: truncation\n## A\n## A\n"
    assert anchors(text) == {
        "get-ready-and-get-modelsreadyname",
        "text-options-truncation",
        "a",
        "a-1",
    }
