"""Events (DESIGN §6): one JSON object per event, carried on the event queue as the payload of
a queue item, and POSTed by BackData to the customer's webhook.

Every event has ``event``, ``id`` (unique, so receivers can drop duplicates), ``timestamp``
(Unix seconds of when it happened) and, when known, ``uuid`` and ``streamid``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Any, Literal

from . import item as item_format
from .queue import ReliableQueue

EventType = Literal["delivered", "bounce", "unsubscribe", "spam-report", "error"]
EVENT_TYPES: tuple[EventType, ...] = ("delivered", "bounce", "unsubscribe", "spam-report", "error")
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
    await queue.redis.lpush(queue.name, encode_event(event, source=source))
