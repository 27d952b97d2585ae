"""The real-world bounce corpus: loader and scorer.

``tests/fixtures/bounces/corpus/expected.yaml`` lists every message of the corpus with what it
says (kind, and per failed recipient the permanence and category); ``SOURCES.md`` beside it
records where each message comes from and under which licence.

Scoring (issue 16, item 2): a bounce or delay entry scores one point per expected failure that
``classify`` returns with the same recipient (case-insensitive), permanence and category; the
failures ``classify`` reports that the entry does not list are counted apart as "false". An
autoreply or spam-report entry scores one point when the kind matches.

Run ``python -m tests.corpus`` for the accuracy overall and per MTA and a list of every miss.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from manycore_common import bounce_rules
from manycore_mxserver.classify import Envelope, Settings, classify

CORPUS = Path(__file__).parent / "fixtures" / "bounces" / "corpus"
KINDS = frozenset({"bounce", "delayed", "autoreply", "spam-report"})
#: The closed taxonomy of failure categories (issue 16, item 2): the labels use it too.
CATEGORIES = frozenset(bounce_rules.CATEGORIES)
#: Every message arrives as a DSN to a return path would: null sender, one recipient.
ENVELOPE = Envelope(mail_from="", rcpts=("bounce@bounce.example.com",))


@dataclass(frozen=True)
class Expected:
    rcpt: str
    permanent: bool
    category: str


@dataclass(frozen=True)
class Entry:
    file: str
    mta: str
    kind: str
    failures: tuple[Expected, ...]
    complainer: str | None = None
    note: str = ""

    @property
    def path(self) -> Path:
        return CORPUS / self.file

    @property
    def points(self) -> int:
        """What the entry is worth: one per expected failure, or one for the kind."""
        return len(self.failures) if self.kind in ("bounce", "delayed") else 1


@dataclass(frozen=True)
class Got:
    rcpt: str
    permanent: bool
    category: str


@dataclass
class Result:
    entry: Entry
    kind: str
    got: tuple[Got, ...]
    seconds: float = 0.0
    #: The complainer classify named, for spam reports (informative, not scored).
    email: str | None = None
    right: int = 0
    misses: list[str] = field(default_factory=list)
    false: list[Got] = field(default_factory=list)


def _entry(raw: dict[str, Any]) -> Entry:
    failures = tuple(
        Expected(str(f["rcpt"]).lower(), bool(f["permanent"]), str(f["category"]))
        for f in raw.get("failures") or ()
    )
    return Entry(
        file=str(raw["file"]),
        mta=str(raw["mta"]),
        kind=str(raw["kind"]),
        failures=failures,
        complainer=raw.get("complainer"),
        note=str(raw.get("note", "")),
    )


def load(path: Path = CORPUS / "expected.yaml") -> list[Entry]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of entries")
    return [_entry(item) for item in raw]


def _category(failure: Any) -> str:
    """The classifier's category for a failure; before ``Failure.category`` existed, the
    shared rules applied to its status and reason."""
    found = getattr(failure, "category", None)
    if found is not None:
        return str(found)
    from manycore_common.bounce_rules import category

    return str(category(failure.status or "", failure.reason))


def run(entry: Entry) -> Result:
    """Classify one corpus message and compare with what it says. A classifier that raises
    scores nothing for the entry and the error is listed as a miss (the other entries still
    count)."""
    data = entry.path.read_bytes()
    started = time.perf_counter()
    try:
        got_class = classify(ENVELOPE, data, Settings())
    except Exception as exc:  # any crash is a miss to report, not a reason to stop scoring
        result = Result(entry, "error", (), time.perf_counter() - started)
        result.misses.append(f"classify raised {type(exc).__name__}: {exc}")
        return result
    seconds = time.perf_counter() - started
    got = tuple(
        Got(str(f.rcpt).lower(), bool(f.permanent), _category(f)) for f in got_class.failures
    )
    email = getattr(got_class, "email", None)
    result = Result(entry, got_class.kind, got, seconds, str(email).lower() if email else None)
    if entry.kind not in ("bounce", "delayed"):
        if got_class.kind == entry.kind:
            result.right = 1
        else:
            result.misses.append(f"kind: expected {entry.kind}, got {got_class.kind}")
        return result
    # MxServer gives bounce events only for kind "bounce" and none for "delayed": a bounce
    # read as a delay notice (or the reverse) is wrong whatever its failures say.
    by_rcpt = {g.rcpt: g for g in got} if got_class.kind == entry.kind else {}
    for exp in entry.failures:
        found = by_rcpt.get(exp.rcpt)
        wanted = f"{exp.rcpt} permanent={exp.permanent} {exp.category}"
        if found is None:
            result.misses.append(f"{wanted}: not found (kind {got_class.kind})")
        elif (found.permanent, found.category) != (exp.permanent, exp.category):
            result.misses.append(f"{wanted}: got permanent={found.permanent} {found.category}")
        else:
            result.right += 1
    expected_rcpts = {e.rcpt for e in entry.failures}
    result.false = [g for g in got if g.rcpt not in expected_rcpts]
    return result


@dataclass(frozen=True)
class Score:
    right: int
    points: int
    false: int
    results: tuple[Result, ...]

    @property
    def accuracy(self) -> float:
        return self.right / self.points if self.points else 0.0


def score(entries: Iterable[Entry] | None = None) -> Score:
    results = tuple(run(e) for e in (load() if entries is None else entries))
    return Score(
        right=sum(r.right for r in results),
        points=sum(r.entry.points for r in results),
        false=sum(len(r.false) for r in results),
        results=results,
    )


def report(found: Score) -> str:
    per_mta: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in found.results:
        per_mta[r.entry.mta][0] += r.right
        per_mta[r.entry.mta][1] += r.entry.points
    slowest = max(found.results, key=lambda r: r.seconds, default=None)
    named = [r for r in found.results if r.entry.complainer]
    complainers = sum(r.email == str(r.entry.complainer).lower() for r in named)
    lines = [
        f"overall: {found.right}/{found.points} = {found.accuracy:.1%} "
        f"({len(found.results)} messages, {len(per_mta)} MTAs); false failures: {found.false}",
    ]
    if slowest is not None:
        lines.append(f"slowest: {slowest.entry.file} {slowest.seconds * 1000:.0f} ms")
    lines.append(f"spam-report complainers named right (not scored): {complainers}/{len(named)}")
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in found.results:
        per_kind[r.entry.kind][0] += r.right
        per_kind[r.entry.kind][1] += r.entry.points
    lines += ["", "per kind:"]
    for kind, (right, points) in sorted(per_kind.items()):
        lines.append(f"  {right / points:7.1%}  {right:3}/{points:<3} {kind}")
    lines += ["", "per MTA:"]
    for mta, (right, points) in sorted(per_mta.items(), key=lambda kv: kv[0].lower()):
        lines.append(f"  {right / points:7.1%}  {right:3}/{points:<3} {mta}")
    lines += ["", "misses:"]
    for r in found.results:
        for miss in r.misses:
            lines.append(f"  {r.entry.file} [{r.entry.mta}]: {miss}")
        for g in r.false:
            lines.append(
                f"  {r.entry.file} [{r.entry.mta}]: false failure {g.rcpt} "
                f"permanent={g.permanent} {g.category}"
            )
    return "\n".join(lines)


def main() -> int:
    print(report(score()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
