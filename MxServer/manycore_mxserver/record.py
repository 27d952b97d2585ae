"""Turning a classification into what goes to Redis: events (each at most once), or the
stored unclassified message. ``events_for`` is pure; ``Recorder`` does the IO."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis

from manycore_common import events
from manycore_common import item as item_format
from manycore_common.bounce_rules import category, permanent_type
from manycore_common.queue import ReliableQueue

from .classify import Classification

SOURCE = "mxserver"
#: Markers that stop a second event for the same bounce, complaint or unsubscribe.
ONCE_SECONDS = 30 * 24 * 3600
AUTOREPLY_ONCE_SECONDS = 24 * 3600

RECEIVED_UNSUBSCRIBE = Counter(
    "mxserver_received_unsubscribe", "Total number of unsubscribe emails received"
)
RECEIVED_UNCLASSIFIED = Counter(
    "mxserver_received_unclassified", "Total number of unclassified emails received"
)
RECEIVED_BOUNCE = Counter(
    "mxserver_received_bounce",
    "Bounce reports received (asynchronous DSNs and text bounces), by type of the first failure",
    ["type"],
)
RECEIVED_AUTOREPLY = Counter("mxserver_received_autoreply", "Auto-replies received")
RECEIVED_SPAM_REPORT = Counter("mxserver_received_spam_report", "Spam reports (ARF) received")
RECEIVED_DELAY = Counter(
    "mxserver_received_delay_notice", "Delay notices received (temporary, no event)"
)
RECEIVED_OWN_DSN = Counter(
    "mxserver_received_own_dsn", "DSNs written by our own Postfix (already reported, no event)"
)
for _type in ("hard", "soft", "unroutable"):
    RECEIVED_BOUNCE.labels(_type)


def events_for(c: Classification, now: float) -> list[tuple[str, dict[str, Any]]]:
    """(once-key, event) pairs for a classification; empty when it yields no event."""
    if c.kind == "unsubscribe" and c.uuid:
        return [
            (f"unsubscribed:{c.uuid}", events.new_event("unsubscribe", uuid=c.uuid, timestamp=now))
        ]
    if c.kind == "bounce" and c.uuid:
        out = []
        for failure in c.failures:
            cat = category(failure.status or "", failure.reason)
            kind = permanent_type(cat) if failure.permanent else "soft"
            event = events.new_event(
                "bounce",
                uuid=c.uuid,
                timestamp=now,
                type=kind,
                reason=failure.reason,
                rcpt=failure.rcpt,
                category=cat,
                ip=failure.remote_mta,
            )
            out.append((f"bounced:{c.uuid}:{failure.rcpt.lower()}", event))
        return out
    if c.kind == "autoreply" and c.uuid:
        event = events.new_event(
            "bounce",
            uuid=c.uuid,
            timestamp=now,
            type="autoreply",
            rcpt=c.email,
            reason="auto-reply",
            category="autoreply",
        )
        return [(f"autoreplied:{c.uuid}:{(c.email or '').lower()}", event)]
    if c.kind == "spam-report":
        event = events.new_event("spam-report", uuid=c.uuid, timestamp=now, email=c.email)
        return [(f"complained:{c.uuid}:{(c.email or '').lower()}", event)]
    return []


@dataclass
class Recorder:
    redis: Redis
    event_queue: ReliableQueue
    unclassified_key: str
    max_count: int
    max_bytes: int

    async def record(self, c: Classification, data: bytes, envelope: dict[str, Any]) -> str:
        """Write what the classification calls for; returns a word for the SMTP reply."""
        now = time.time()
        pairs = events_for(c, now)
        if pairs:
            ttl = AUTOREPLY_ONCE_SECONDS if c.kind == "autoreply" else ONCE_SECONDS
            await events.emit_once_many(self.event_queue, pairs, source=SOURCE, ttl=ttl)
            self._count(c)
            return c.kind
        if c.kind in ("delayed", "own-dsn"):
            self._count(c)
            return c.kind
        await self.store_unclassified(c, data, envelope)
        RECEIVED_UNCLASSIFIED.inc()
        return "unclassified"

    def _count(self, c: Classification) -> None:
        if c.kind == "unsubscribe":
            RECEIVED_UNSUBSCRIBE.inc()
        elif c.kind == "bounce":
            first = c.failures[0]
            cat = category(first.status or "", first.reason)
            RECEIVED_BOUNCE.labels(permanent_type(cat) if first.permanent else "soft").inc()
        elif c.kind == "autoreply":
            RECEIVED_AUTOREPLY.inc()
        elif c.kind == "spam-report":
            RECEIVED_SPAM_REPORT.inc()
        elif c.kind == "delayed":
            RECEIVED_DELAY.inc()
        elif c.kind == "own-dsn":
            RECEIVED_OWN_DSN.inc()

    async def store_unclassified(
        self, c: Classification, data: bytes, envelope: dict[str, Any]
    ) -> None:
        """Newest first, at most ``max_count`` messages of at most ``max_bytes`` each."""
        if self.max_count == 0:
            return
        truncated = len(data) > self.max_bytes
        raw = item_format.new_item(
            data[: self.max_bytes],
            source=SOURCE,
            uuid=c.uuid,
            extra={
                "mail_from": envelope.get("mail_from", ""),
                "rcpts": list(envelope.get("rcpts", [])) or None,
                "note": c.note or None,
                "truncated": truncated or None,
                "bytes": len(data),
            },
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.unclassified_key, raw)
        pipe.ltrim(self.unclassified_key, 0, self.max_count - 1)
        await pipe.execute()
