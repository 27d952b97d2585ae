"""Latency by hop, for ``bench/e2e.py``'s paced rounds: where the time from the Receiver's 250
to the sink goes, from the stamps the stack already records in ``trace:<uuid>``
(common/manycore_common/trace.py), read with the exporter's read-only login.

Stamps per message, in the order they happen (all ``time.time()`` on this one machine):

* ``queued``: the Receiver made the item (``enqueued_at``, ms; carried by the Transformer's
  ``transformed`` record). Before the 250: the group commit and the reply come after it.
* ``250``: the client read the Receiver's 250.
* ``taken``: the Transformer's ``transformed`` record ``at``: the time it stamped the batch it
  had just taken (before suppression, transform, hand-over to INCOMING-TO-POSTFIX).
* ``in postfix``: PostfixLog's ``injected`` record ``at``: Postfix answered 250 to its DATA.
* ``sink``: the sink's arrival stamp.

Not recorded anywhere, so not split here: the Transformer's push and PostfixLog's take (the
hop "taken → in postfix" holds transform, hand-over, PostfixLog's take, claim and the SMTP
injection), and Postfix's own steps (postlogd stamps whole seconds)."""

from __future__ import annotations

import statistics
from typing import Any

from manycore_common import trace

#: Hop name → (from stamp, to stamp), in the order printed.
HOPS = {
    "queued → 250": ("queued", "250"),
    "queued → taken": ("queued", "taken"),
    "taken → in postfix": ("taken", "in postfix"),
    "in postfix → sink": ("in postfix", "sink"),
    "250 → sink": ("250", "sink"),
}


def stamps_of(records: list[dict[str, Any]], accepted: float, arrived: float) -> dict[str, float]:
    """The stamps of one message found in its trace records (pure); missing ones left out."""
    found = {"250": accepted, "sink": arrived}
    for record in records:
        stage, at = record.get("stage"), record.get("at")
        if stage == "transformed" and isinstance(at, int | float):
            found.setdefault("taken", float(at))
            queued = record.get("queued")
            if isinstance(queued, int | float):
                found.setdefault("queued", float(queued))
        elif stage == "injected" and isinstance(at, int | float):
            found.setdefault("in postfix", float(at))
    return found


def hops_of(all_stamps: list[dict[str, float]]) -> dict[str, list[float]]:
    """Seconds per hop over the messages that have both ends of it (pure)."""
    out: dict[str, list[float]] = {}
    for name, (start, end) in HOPS.items():
        out[name] = [s[end] - s[start] for s in all_stamps if start in s and end in s]
    return out


def measure(redis: Any, stamps: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    """Read ``trace:<uuid>`` of each recipient's message (the uuid is the local part, see
    bench/e2e.py rcpt_of) in one pipeline; seconds per hop."""
    rcpts = list(stamps)
    with redis.pipeline(transaction=False) as pipe:
        for rcpt in rcpts:
            pipe.lrange(trace.key(rcpt.split("@")[0]), 0, -1)
        lists = pipe.execute()
    found = [
        stamps_of([trace.parse(raw) for raw in raws], *stamps[rcpt])
        for rcpt, raws in zip(rcpts, lists, strict=True)
    ]
    return hops_of(found)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def table(rounds: list[dict[str, list[float]]], case: str) -> list[str]:
    """Lines: each hop's p50 and p99 in ms (median over rounds) and how many messages had
    both stamps."""
    lines = []
    for name in HOPS:
        seen = [r[name] for r in rounds if r.get(name)]
        if not seen:
            lines.append(f"{case:<8}{name:<22}{'(no stamps)':>12}")
            continue
        p50 = statistics.median(percentile(v, 50) for v in seen) * 1000
        p99 = statistics.median(percentile(v, 99) for v in seen) * 1000
        count = sum(len(v) for v in seen)
        lines.append(f"{case:<8}{name:<22}{p50:>10.1f}{p99:>10.1f}{count:>8}")
    return lines


HEADER = f"{'case':<8}{'hop':<22}{'p50 ms':>10}{'p99 ms':>10}{'msgs':>8}"
