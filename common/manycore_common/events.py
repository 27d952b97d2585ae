"""Events (docs/ARCHITECTURE.md#events): one JSON object per event, carried on the event queue as
the payload of a queue item, and POSTed by BackData to the customer's webhook.

Every event has ``event``, ``id`` (unique, so receivers can drop duplicates), ``timestamp``
(Unix seconds of when it happened) and, when known, ``uuid`` and ``streamid``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Sequence
from typing import Any, Literal

from . import item as item_format
from . import replicas
from .queue import ReliableQueue

EventType = Literal[
    "delivered", "bounce", "deferred", "unsubscribe", "spam-report", "suppressed", "error"
]
EVENT_TYPES: tuple[EventType, ...] = (
    "delivered",
    "bounce",
    # A temporary failure, not an outcome: PostfixLog emits it only when
    # ``postfixlog.deferred-events`` is on; the final event (delivered or bounce) follows.
    "deferred",
    "unsubscribe",
    "spam-report",
    # The Transformer dropped a recipient on the suppression list (manycore_common.suppression).
    "suppressed",
    "error",
)
BOUNCE_TYPES = ("hard", "soft", "unroutable", "autoreply")

#: Longest stack trace carried in an error event; the rest is in the service's log.
MAX_STACK_TRACE = 8 * 1024


def new_event_id() -> str:
    return os.urandom(16).hex()


def new_event(
    event: EventType,
    *,
    uuid: str | None = None,
    streamid: str | None = None,
    timestamp: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An event dict with the common fields filled in; ``None`` fields are left out."""
    if event not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event!r}")
    if event == "bounce" and fields.get("type") not in BOUNCE_TYPES:
        raise ValueError(f"bounce type must be one of {BOUNCE_TYPES}, got {fields.get('type')!r}")
    data: dict[str, Any] = {
        "event": event,
        "id": new_event_id(),
        "timestamp": int(time.time()) if timestamp is None else int(timestamp),
        "uuid": uuid,
        "streamid": streamid,
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def error_event(
    service: str,
    msg: str,
    *,
    uuid: str | None = None,
    streamid: str | None = None,
    exc: BaseException | None = None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"service": service, "msg": msg}
    if exc is not None:
        fields["stack-trace"] = "".join(traceback.format_exception(exc))[-MAX_STACK_TRACE:]
    return new_event("error", uuid=uuid, streamid=streamid, **fields)


def encode_event(event: dict[str, Any], *, source: str) -> bytes:
    """The queue item for an event: its JSON is the payload."""
    payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return item_format.new_item(
        payload, source=source, uuid=event.get("uuid"), stream_id=event.get("streamid")
    )


async def emit(queue: ReliableQueue, event: dict[str, Any], *, source: str) -> None:
    """Put one event on the event queue. Events are never refused for a full queue: they are
    small, and losing an unsubscribe or a bounce is worse than a long queue."""
    await replicas.command(queue.redis, "LPUSH", queue.name, encode_event(event, source=source))


# KEYS: event queue, once-keys... ARGV: TTL seconds, then one event item per once-key
# → how many were pushed. Each event goes out only if its once-key was not set yet; markers
# and events are written by one script, so never one without the other.
_EMIT_ONCE = """
local pushed = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', tonumber(ARGV[1])) then
    redis.call('LPUSH', KEYS[1], ARGV[i])
    pushed = pushed + 1
  end
end
return pushed
"""


async def emit_once_many(
    queue: ReliableQueue,
    keyed_events: Sequence[tuple[str, dict[str, Any]]],
    *,
    source: str,
    ttl: int,
) -> int:
    """Put each (once-key, event) on the queue unless an event with the same once-key was
    put there within ``ttl`` seconds (e.g. a provider POSTing the same one-click
    unsubscribe twice, or a second DSN for a bounce already reported). Returns how many."""
    if not keyed_events:
        return 0
    script = queue.redis.register_script(_EMIT_ONCE)
    keys = [queue.name, *(key for key, _ in keyed_events)]
    args: list[int | bytes] = [ttl, *(encode_event(e, source=source) for _, e in keyed_events)]
    return int(await replicas.call(queue.redis, script, keys, args))


async def emit_once(
    queue: ReliableQueue, event: dict[str, Any], *, source: str, once_key: str, ttl: int
) -> bool:
    """``emit_once_many`` for one event: True if it was pushed."""
    return await emit_once_many(queue, [(once_key, event)], source=source, ttl=ttl) == 1
