"""What goes into one POST (pure): which queue items are events, the JSON array body, and which
events are too old to keep retrying.

An item's payload is posted as it is (no re-encoding), so what a producer wrote is what the
webhook receives; it is checked first, because one bad payload would make the whole array
invalid JSON and the webhook would refuse every event with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from manycore_common import item as item_format
from manycore_common.item import Item

#: How much of a malformed payload's error is kept in the dead-letter reason.
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Event:
    """A queue item whose payload is a JSON object with an ``event``."""

    item: Item
    kind: str
    body: bytes
    #: Unix seconds from which the event's age counts (see ``born_at``).
    born: float
    #: ``body`` parsed (read once here; the trace records pick their fields from it).
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Malformed:
    item: Item
    reason: str


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are accepted by Python's json but are not JSON (RFC 8259 §6): a
    # receiver's parser would reject the whole array.
    raise _NotJson(f"{name} is not valid JSON")


def born_at(item: Item, event: dict[str, Any], now: float) -> float:
    """When the event's age starts: when it was queued; else when it happened; else now (an
    event we cannot date is never dropped for its age before it has been tried for a while)."""
    enqueued = item.header.get("enqueued_at")
    if isinstance(enqueued, int) and not isinstance(enqueued, bool) and enqueued > 0:
        return enqueued / 1000
    timestamp = event.get("timestamp")
    if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool) and timestamp > 0:
        return float(timestamp)
    return now


def stable_id(item: Item) -> str:
    """An id for an event that has none: the same on every attempt, so receivers can still
    drop duplicates."""
    return item.id or hashlib.sha256(item.raw).hexdigest()[:32]


def classify(item: Item, now: float) -> Event | Malformed:
    if item.header.get("corrupt"):
        return Malformed(item, "malformed event: the queue item has no valid header")
    try:
        event = json.loads(item.payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return Malformed(item, f"malformed event: not JSON ({str(exc)[:MAX_REASON]})")
    if not isinstance(event, dict):
        return Malformed(item, "malformed event: not a JSON object")
    kind = event.get("event")
    if not isinstance(kind, str) or not kind:
        return Malformed(item, 'malformed event: no "event" field')
    body = item.payload
    if not isinstance(event.get("id"), str) or not event["id"]:
        event["id"] = stable_id(item)
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Event(item, kind, body, born_at(item, event, now), event)


def split(items: Sequence[Item], now: float) -> tuple[list[Event], list[Malformed]]:
    """Events in queue order, and the items that cannot be posted."""
    events: list[Event] = []
    malformed: list[Malformed] = []
    for item in items:
        result = classify(item, now)
        if isinstance(result, Event):
            events.append(result)
        else:
            malformed.append(result)
    return events, malformed


def body(events: Sequence[Event]) -> bytes:
    """The POST body: a JSON array of the events, each exactly as queued."""
    return b"[" + b",".join(e.body for e in events) + b"]"


def expired(events: Sequence[Event], now: float, max_age: float) -> tuple[list[Event], list[Event]]:
    """(events at least ``max_age`` old, the others), each in queue order."""
    old = [e for e in events if now - e.born >= max_age]
    young = [e for e in events if now - e.born < max_age]
    return old, young


def oldest_age(raws: Sequence[bytes | None], now: float) -> float:
    """Age in seconds of the oldest of some raw queue items (0 when there are none), from
    their ``enqueued_at``; items without one are skipped."""
    ages = [0.0]
    for raw in raws:
        if raw is None:
            continue
        try:
            enqueued = item_format.decode(raw).header.get("enqueued_at")
        except item_format.ItemFormatError:
            continue
        if isinstance(enqueued, int) and not isinstance(enqueued, bool) and enqueued > 0:
            ages.append(now - enqueued / 1000)
    return max(ages)
