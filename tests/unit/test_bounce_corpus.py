"""The real-world bounce corpus (issue 16, item 2): its rules, and the classifier's accuracy on it.

The corpus and its scorer live in tests/corpus.py; ``python -m tests.corpus`` lists every miss.
"""

from __future__ import annotations

import re

import pytest

from tests import corpus

#: The accuracy the classifier reaches on the corpus (rounded down): raise it as the classifier
#: improves, never lower it to make a change pass.
THRESHOLD = 0.95

ENTRIES = corpus.load()


def test_corpus_is_large_and_varied() -> None:
    assert len(ENTRIES) >= 150
    assert len({e.mta for e in ENTRIES}) >= 30
    bounces = [e for e in ENTRIES if e.kind == "bounce"]
    assert len(bounces) > len(ENTRIES) / 2


def test_every_file_is_listed_once_and_exists() -> None:
    listed = [e.file for e in ENTRIES]
    assert len(listed) == len(set(listed))
    on_disk = {
        p.relative_to(corpus.CORPUS).as_posix() for p in corpus.CORPUS.glob("*/*") if p.is_file()
    }
    messages = {f for f in on_disk if not f.rsplit("/", 1)[-1].startswith(("LICENSE", "NOTICE"))}
    assert messages == set(listed)


def test_entries_use_the_closed_vocabulary() -> None:
    for e in ENTRIES:
        assert e.kind in corpus.KINDS, e.file
        assert e.mta.strip(), e.file
        for f in e.failures:
            assert f.category in corpus.CATEGORIES, (e.file, f.category)
            assert f.rcpt == f.rcpt.lower() and "@" in f.rcpt, (e.file, f.rcpt)
        if e.kind in ("bounce", "delayed"):
            assert e.failures, e.file
        else:
            assert not e.failures, e.file
        if e.kind == "delayed":
            assert not any(f.permanent for f in e.failures), e.file


def test_every_source_has_provenance_and_licence() -> None:
    sources = (corpus.CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^## `([^`]+)`", sources, re.MULTILINE))
    assert {e.file.split("/", 1)[0] for e in ENTRIES} <= documented
    for slug in documented:
        section = sources.split(f"## `{slug}`", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"^- Licence: \S", section, re.MULTILINE), slug


def test_the_scorer_counts_what_the_classifier_gets_right() -> None:
    entry = next(e for e in ENTRIES if e.kind == "bounce" and e.failures)
    wrong = corpus.Entry(
        entry.file,
        entry.mta,
        entry.kind,
        tuple(corpus.Expected("nobody@invalid.example", True, "other") for _ in entry.failures),
    )
    assert corpus.run(wrong).right == 0


@pytest.mark.timeout(300)
def test_accuracy_does_not_regress() -> None:
    found = corpus.score(ENTRIES)
    assert found.accuracy >= THRESHOLD, corpus.report(found)
