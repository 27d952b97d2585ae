"""The operations guide's links hold: every relative link in docs/operations/*.md and
CHANGELOG.md names a file that exists, and a section (#anchor) of a Markdown file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.support import REPO
from tests.deploy.test_alerts import anchors

DOCS = [*sorted((REPO / "docs" / "operations").glob("*.md")), REPO / "CHANGELOG.md"]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [m for m in _LINK.findall(text) if not re.match(r"[a-z]+:", m)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_anchors_exist(doc: Path) -> None:
    found = links(doc)
    assert found
    problems = []
    for link in found:
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            problems.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text()):
            problems.append(f"{link}: no such section")
    assert not problems, problems
