"""What ``manycore-queues`` prints (pure): a trace, where a uuid is now, one item, the
unclassified list. Kept apart from the Redis side (``queueinspect``) so it is unit-tested."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from . import trace
from .item import Item
from .queueinspect import letter_id

#: The stages in the order a message passes them (for the "not seen" hints).
STAGES = ("queued", "transformed", "injected", "log", "event")


def when_ms(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError):
        return "?"


def trace_lines(
    uuid: str, records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]
) -> list[str]:
    """The whole answer to "what happened to ``uuid``": the recorded stages, then where its
    items are in Redis now, then what the reader should know about what is not shown."""
    lines = [f"trace of {uuid}: {len(records)} record(s)"]
    lines += ["  " + trace.render(r) for r in records]
    seen = {str(r.get("stage")) for r in records}
    lines.append("in Redis now:")
    held = [(row, item) for row in rows for item in row.get("items", [])]
    for row, item in held:
        lines.append(f"  {row['queue']} {row['where']}: " + _kv(item))
    if not held:
        lines.append("  in no queue, processing list or dead-letter list")
    capped = [f"{r['queue']} {r['where']}" for r in rows if r.get("capped")]
    if capped:
        lines.append("  (only the first items of these lists were read: " + ", ".join(capped) + ")")
    lines += _hints(seen, bool(held))
    return lines


def _hints(seen: set[str], held: bool) -> list[str]:
    notes = []
    if "injected" not in seen and not held:
        notes.append(
            "note: no injection recorded and nothing queued: unknown uuid, or its trace "
            "expired (trace.retention-seconds), or tracing is off"
        )
    if "injected" in seen and "log" not in seen:
        notes.append("note: injected, no outcome in Postfix's log yet (still in Postfix's queue)")
    if "transformed" not in seen:
        notes.append(
            "note: no 'transformed' record: a message not yet handed over shows under "
            "'in Redis now' (with when it was queued); an 'injected' record per copy shows "
            "it was"
        )
    return notes


def _kv(data: dict[str, Any]) -> str:
    out = []
    for k, v in data.items():
        if k in ("enqueued_at", "died"):
            v = when_ms(v)
        out.append(f"{k}={v}")
    return " ".join(out)


def item_lines(item: Item, where: str, show_payload: bool = True, limit: int = 65536) -> list[str]:
    """One item for ``peek`` / ``unclassified --show``: its header, then its payload as text
    (undecodable bytes replaced; cut at ``limit`` octets, which is said)."""
    lines = [f"{where} id={letter_id(item)}"]
    lines += [f"  {k}: {v}" for k, v in sorted(item.header.items())]
    if show_payload:
        body = item.payload[:limit].decode("utf-8", "replace")
        lines.append(f"--- payload ({len(item.payload)} bytes) ---")
        lines.append(body)
        if len(item.payload) > limit:
            lines.append(f"--- cut at {limit} bytes; --raw prints all ---")
    return lines


def unclassified_row(index: int, item: Item) -> dict[str, Any]:
    """One stored unclassified message (MxServer's ``store_unclassified`` header)."""
    h = item.header
    row = {
        "index": index,
        "received": when_ms(h.get("enqueued_at")),
        "sender": h.get("mail_from", ""),
        "rcpts": h.get("rcpts") or [],
        "rcpt_count": h.get("rcpt_count"),
        "uuid": h.get("uuid"),
        "note": h.get("note", ""),
        "bytes": h.get("bytes", len(item.payload)),
        "truncated": bool(h.get("truncated")),
    }
    return {k: v for k, v in row.items() if v is not None}


def unclassified_line(row: dict[str, Any]) -> str:
    rcpts = ",".join(str(r) for r in row.get("rcpts", []))
    if row.get("rcpt_count"):
        rcpts += f" (+{int(row['rcpt_count']) - len(row.get('rcpts', []))} more)"
    cut = " truncated" if row.get("truncated") else ""
    uuid = f" uuid={row['uuid']}" if row.get("uuid") else ""
    return (
        f"#{row['index']} {row['received']} from=<{row['sender']}> to={rcpts or '-'}{uuid} "
        f"size={row['bytes']}{cut} note={row.get('note', '')!r}"
    )


def unclassified_heading(key: str, total: int, untagged: bool, other: str, other_total: int) -> str:
    """The first line of ``unclassified``: which list is shown, and what the other holds.
    The tagged list (a verified tag ties each message to mail we sent) is the default; the
    untagged one (postmaster@ and abuse mail anyone may send) takes ``--untagged``."""
    which = "untagged" if untagged else "tagged"
    switch = "without --untagged" if untagged else "--untagged"
    return (
        f"{key}: {total} {which} message(s), newest first "
        f"({other}: {other_total}, {switch} to list them)"
    )
