"""Trace records of webhook deliveries (pure): one per event, for ``manycore-queues trace``
(common/manycore_common/trace.py). Every event that names a message's uuid passes through
BackData, so these records cover each stage that makes an event (queued → delivered, bounce,
deferred, unsubscribe, spam-report, suppressed, error) together with what the webhook answered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from manycore_common import trace

from .batch import Event

#: Event fields copied into the trace record (the rest is in the webhook's copy).
FIELDS = ("id", "rcpt", "type", "category", "reason", "timestamp", "service", "msg")


def _fields(event: Event) -> dict[str, Any]:
    """The event's fields for its trace record, from the JSON ``batch.classify`` already
    parsed (an Event made elsewhere without it: parsed here)."""
    data = event.data
    if not data:
        try:
            data = json.loads(event.body)
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
    picked = {k: data[k] for k in FIELDS if k in data}
    if "timestamp" in picked:
        picked["happened"] = picked.pop("timestamp")
    if isinstance(picked.get("reason"), str):
        picked["reason"] = picked["reason"][:300]
    return picked


def records(
    events: Sequence[Event], webhook: str, detail: str, at: float
) -> list[tuple[str, bytes]]:
    """(uuid, record) for every event with a uuid: ``webhook`` is ``delivered``, ``retry``,
    ``rejected`` or ``expired``; ``detail`` what the webhook answered."""
    out = []
    for event in events:
        uuid = event.item.uuid
        if not uuid:
            continue
        record = trace.entry(
            "event",
            "backdata",
            at,
            event=event.kind,
            source=event.item.header.get("source"),
            webhook=webhook,
            answer=detail[:300],
            **_fields(event),
        )
        out.append((uuid, record))
    return out
