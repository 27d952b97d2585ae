"""Per-message trace records (docs/ARCHITECTURE.md#redis-keys): "what happened to X-Uuid abc?"

``trace:<uuid>`` (LIST; ``manycore_common.keyspace`` names it) holds one short JSON object per
stage a service saw, oldest first: ``{"at": <unix seconds>, "stage": ..., "by": <service>,
...}``. The list is capped at
``max-entries`` (LTRIM keeps the newest) and expires ``retention-seconds`` after its last
write (the ``trace`` section of the global config), so a trace costs a few hundred bytes per
message for a bounded time. Trace writes are diagnostic: a failure to write one is counted
and logged, never allowed to hold up or undo the step it describes.

Writers queue their records on the same pipeline as the step's own commands where they have
one, or send one pipelined round trip per batch (``write``), or have the step's own Lua script
write the record (``LUA``, ``script_args``: no command of its own, and never a record without
its step). ``manycore-queues trace`` reads the list (``read``) and renders it (``render``,
pure).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from . import keyspace
from .config import GlobalTrace
from .item import Item

log = logging.getLogger(__name__)

WRITE_FAILURES = Counter(
    "trace_write_failures", "Trace records not written because Redis failed (diagnostic only)"
)


@dataclass(frozen=True)
class TraceSettings:
    """``trace`` in the global config (``GlobalTrace``): off with ``enabled: false``."""

    enabled: bool = True
    retention_seconds: int = 86400
    max_entries: int = 100

    @classmethod
    def of(cls, section: GlobalTrace) -> TraceSettings:
        return cls(section.enabled, section.retention_seconds, section.max_entries)


def key(uuid: str) -> str:
    return keyspace.current().trace(uuid)


def entry(stage: str, by: str, at: float | None = None, **fields: Any) -> bytes:
    """One record: compact JSON, ``None`` fields left out."""
    data: dict[str, Any] = {"at": round(time.time() if at is None else at, 3), "stage": stage}
    data["by"] = by
    data.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def queue(pipe: Pipeline, settings: TraceSettings, records: Iterable[tuple[str, bytes]]) -> int:
    """Add (uuid, record) pairs to ``pipe``: RPUSH, LTRIM to the cap, EXPIRE. Records of one
    uuid go in one RPUSH. Returns the number of commands queued (0 when disabled)."""
    if not settings.enabled:
        return 0
    grouped: dict[str, list[bytes]] = {}
    for uuid, record in records:
        if uuid:
            grouped.setdefault(uuid, []).append(record)
    for uuid, values in grouped.items():
        name = key(uuid)
        pipe.rpush(name, *values)
        pipe.ltrim(name, -settings.max_entries, -1)
        pipe.expire(name, settings.retention_seconds)
    return 3 * len(grouped)


#: For a script that writes its step's record itself: ``trace_push(key, i)`` with the three
#: ARGV of ``script_args`` from index ``i``. Diagnostic: ``redis.pcall``, so a failure (a key of
#: the wrong type) never fails the step; '' writes nothing (tracing off, or no uuid).
LUA = """
local function trace_push(key, i)
  if ARGV[i] == '' then return end
  redis.pcall('RPUSH', key, ARGV[i])
  redis.pcall('LTRIM', key, -tonumber(ARGV[i + 1]), -1)
  redis.pcall('EXPIRE', key, tonumber(ARGV[i + 2]))
end
"""


def script_args(
    settings: TraceSettings, uuid: str | None, record: bytes | None
) -> tuple[str, list[bytes | int]]:
    """(the KEYS entry, the three ARGV) of ``LUA``'s ``trace_push`` for one record; without
    one (tracing off, no uuid) a key that is never written, so the script's KEYS stay where
    they are (and in the key prefix's slot)."""
    if not settings.enabled or not uuid or record is None:
        return key("-"), [b"", 0, 0]
    return key(uuid), [record, settings.max_entries, settings.retention_seconds]


async def write(
    redis: Redis, settings: TraceSettings, records: Sequence[tuple[str, bytes]]
) -> None:
    """One pipelined round trip for all ``records``; failures are counted, not raised."""
    if not settings.enabled or not records:
        return
    pipe = redis.pipeline(transaction=False)
    if not queue(pipe, settings, records):
        return
    try:
        await pipe.execute()
    except (RedisError, OSError) as exc:
        WRITE_FAILURES.inc()
        log.debug("trace not written", extra={"error": str(exc)})


async def read(redis: Redis, uuid: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The records of ``uuid``, oldest first (at most ``limit``)."""
    raws = await redis.lrange(key(uuid), -limit, -1)
    return [parse(raw) for raw in raws]


def parse(raw: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {
            "stage": "?",
            "raw": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw,
        }
    return data if isinstance(data, dict) else {"stage": "?", "raw": str(data)}


def when(at: Any) -> str:
    try:
        return datetime.fromtimestamp(float(at), UTC).isoformat(timespec="milliseconds")
    except (TypeError, ValueError, OverflowError):
        return "?"


def render(record: dict[str, Any]) -> str:
    """One line: time, stage, who, then the other fields as ``k=v`` in a stable order."""
    rest = " ".join(
        f"{k}={_short(v)}" for k, v in sorted(record.items()) if k not in ("at", "stage", "by")
    )
    head = f"{when(record.get('at'))}  {record.get('stage', '?'):<12} {record.get('by', '?'):<11}"
    return f"{head} {rest}".rstrip()


def transformed(
    splits: Sequence[tuple[Item, Sequence[bytes]]], queue: str, at: float
) -> list[tuple[str, bytes]]:
    """The Transformer's hand-over of each message: which queue it came from, when it was
    queued (the item's ``enqueued_at``) and by which front door, and how many copies (one
    per recipient) went on to PostfixLog. Covers the receivers' "queued" too."""
    out = []
    for item, copies in splits:
        if not item.uuid:
            continue
        enqueued = item.header.get("enqueued_at")
        record = entry(
            "transformed",
            "transformer",
            at,
            queue=queue,
            queued=enqueued / 1000 if isinstance(enqueued, int) else None,
            source=item.header.get("source"),
            item=item.id or None,
            attempts=item.attempts or None,
            copies=len(copies),
        )
        out.append((item.uuid, record))
    return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 200 else text[:197] + "..."


#: For components built without a config (tests, tools): writes nothing.
OFF = TraceSettings(enabled=False)
