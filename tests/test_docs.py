"""The docs stay true where a test can tell: every relative link and #anchor resolves, and the README's
AsyncHTTPTestCase example is the one tests/test_app_testcase.py runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def links(page: Path) -> list[str]:
    """Markdown link targets outside code (a code span's brackets are not links)."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8"))))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_anchor_ids_follow_github() -> None:
    page = ROOT / "docs" / "api.md"
    assert {"post-chat", "openai-compatible-api", "error-types"} <= anchors(page)


def test_readme_quotes_the_running_testcase_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quoted = re.search(r"```python\n(import json\n\nfrom tornado\.testing import AsyncHTTPTestCase\n.*?)```", readme, re.DOTALL)
    assert quoted is not None, "README.md lost its AsyncHTTPTestCase example"
    source = (ROOT / "tests" / "test_app_testcase.py").read_text(encoding="utf-8")
    assert quoted.group(1) == source.split('"""\n\n', 1)[1]
