"""Turning an analysis into what goes to Redis: events (each at most once), or the stored
unclassified message. ``events_for`` is pure; ``Recorder`` does the IO (the stream ids of the
tags, the once-markers, the unclassified list)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from manycore_common import events, feedbacktag
from manycore_common import item as item_format
from manycore_common.config import SuppressionSettings
from manycore_common.queue import ReliableQueue
from manycore_common.suppressionmetrics import count_suppressions
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import emit_once_suppressing

from .authenticate import Analysis, Finding, bounce_type
from .metrics import (
    RECEIVED_AUTOREPLY,
    RECEIVED_BOUNCE,
    RECEIVED_DELAY,
    RECEIVED_OWN_DSN,
    RECEIVED_SPAM_REPORT,
    RECEIVED_UNCLASSIFIED,
    RECEIVED_UNSUBSCRIBE,
    REPORTS_TRUNCATED,
    UNPROVEN,
)
from .senders import Senders

SOURCE = "mxserver"
#: Markers that stop a second event for the same bounce, complaint or unsubscribe.
ONCE_SECONDS = 30 * 24 * 3600
AUTOREPLY_ONCE_SECONDS = 24 * 3600
#: What a stored unclassified item may add to the message itself (envelope, note), at most.
ITEM_OVERHEAD = 8 * 1024


_ONCE_PREFIX = {
    "bounce": "bounced",
    "autoreply": "autoreplied",
    "spam-report": "complained",
    "unsubscribe": "unsubscribed",
}


def once_key(f: Finding) -> str:
    """The marker that makes an event happen once: per message and recipient (the tag's
    fingerprint, so address spellings do not matter)."""
    return f"{_ONCE_PREFIX[f.kind]}:{f.tag.uuid}:{f.tag.fingerprint.hex()}"


def one_click_marker(uuid: str) -> str:
    """HttpReceiver's once-marker of a one-click unsubscribe: its token names the message,
    not the recipient. A mailto unsubscribe sets it too, so the mailto and the POST a
    provider sends for one person give one event; it never stops another recipient's."""
    return f"unsubscribed:{uuid}"


def event_for(f: Finding, streamid: str | None, now: float) -> dict[str, Any]:
    """The event of one finding; ``rcpt`` only when a tag confirmed it."""
    common: dict[str, Any] = {"uuid": f.tag.uuid, "streamid": streamid, "timestamp": now}
    if f.kind == "bounce" and f.failure is not None:
        kind, cat = bounce_type(f.failure)
        return events.new_event(
            "bounce",
            **common,
            type=kind,
            reason=f.failure.reason,
            rcpt=f.rcpt,
            category=cat,
            ip=f.failure.remote_mta,
        )
    if f.kind == "autoreply":
        return events.new_event(
            "bounce", **common, type="autoreply", rcpt=f.rcpt, reason="auto-reply",
            category="autoreply",
        )  # fmt: skip
    if f.kind == "spam-report":
        # ``email`` is the older name of the complainer's address; both stay.
        return events.new_event("spam-report", **common, rcpt=f.rcpt, email=f.rcpt)
    return events.new_event("unsubscribe", **common, rcpt=f.rcpt)


def events_for(
    found: Sequence[Finding], streams: Mapping[str, str], now: float
) -> list[tuple[str, dict[str, Any]]]:
    """(once-key, event) pairs; ``streams`` maps a tag's stream field to its stream id."""
    pairs = []
    for f in found:
        field = f.tag.stream_field
        pairs.append((once_key(f), event_for(f, streams.get(field) if field else None, now)))
    return pairs


def _count(analysis: Analysis) -> None:
    c = analysis.classification
    kinds = {f.kind for f in analysis.findings}
    if "unsubscribe" in kinds:
        RECEIVED_UNSUBSCRIBE.inc()
    elif c.kind == "bounce":
        kind, _ = bounce_type(c.failures[0])
        RECEIVED_BOUNCE.labels(kind).inc()
    elif c.kind == "autoreply":
        RECEIVED_AUTOREPLY.inc()
    elif c.kind == "spam-report":
        RECEIVED_SPAM_REPORT.inc()
    elif c.kind == "delayed":
        RECEIVED_DELAY.inc()
    elif c.kind == "own-dsn":
        RECEIVED_OWN_DSN.inc()


def unclassified_keep(max_count: int, max_bytes: int, max_total_bytes: int) -> int:
    """How many unclassified items the list keeps: ``max-count``, fewer when that many of the
    largest items would pass ``max-total-bytes``."""
    return min(max_count, max_total_bytes // (max_bytes + ITEM_OVERHEAD))


@dataclass
class Recorder:
    redis: Redis
    event_queue: ReliableQueue
    unclassified_key: str
    max_count: int
    max_bytes: int
    max_total_bytes: int = 64 * 1024 * 1024
    max_rcpts: int = 10
    senders: Senders = field(default_factory=Senders)
    suppression: SuppressionSettings = field(default_factory=SuppressionSettings)

    async def record(
        self, analysis: Analysis, data: bytes, envelope: dict[str, Any], uuid: str | None = None
    ) -> str:
        """Write what the analysis calls for; returns a word for the SMTP reply. ``uuid`` (of
        a verified envelope tag) goes with a stored unclassified message."""
        c = analysis.classification
        if analysis.ignored_failures:
            REPORTS_TRUNCATED.inc()
        if analysis.findings:
            streams = await self.stream_ids(analysis.findings)
            pairs = events_for(analysis.findings, streams, time.time())
            ttl = AUTOREPLY_ONCE_SECONDS if c.kind == "autoreply" else ONCE_SECONDS
            domains = self.senders.for_rcpts(str(r) for r in envelope.get("rcpts", []))
            ops = [ops_for_event(event, domains, self.suppression) for _, event in pairs]
            await emit_once_suppressing(self.event_queue, pairs, ops, source=SOURCE, ttl=ttl)
            count_suppressions((op for group in ops for op in group), SOURCE)
            for uuid in {f.tag.uuid for f in analysis.findings if f.kind == "unsubscribe"}:
                await self.redis.set(one_click_marker(uuid), "1", ex=ONCE_SECONDS)
            _count(analysis)
            return analysis.findings[0].kind
        if c.kind in ("delayed", "own-dsn"):
            _count(analysis)
            return c.kind
        note = c.note
        if c.kind in ("bounce", "autoreply", "spam-report"):
            UNPROVEN.labels(c.kind).inc()
            note = f"{c.kind} not tied to a recipient of ours by a verified tag"
        await self.store_unclassified(data, envelope, note, uuid)
        RECEIVED_UNCLASSIFIED.inc()
        return "unclassified"

    async def stream_ids(self, found: Sequence[Finding]) -> dict[str, str]:
        """The stream ids the Transformer registered for the tags' stream hashes."""
        fields = sorted({f.tag.stream_field for f in found if f.tag.stream_field})
        if not fields:
            return {}
        values = await self.redis.hmget(feedbacktag.STREAMS_KEY, fields)
        return {
            k: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for k, v in zip(fields, values, strict=True)
            if v is not None
        }

    async def store_unclassified(
        self, data: bytes, envelope: dict[str, Any], note: str, uuid: str | None = None
    ) -> None:
        """Newest first, bounded in count, in octets per item and in total octets."""
        keep = unclassified_keep(self.max_count, self.max_bytes, self.max_total_bytes)
        if keep == 0:
            return
        rcpts = list(envelope.get("rcpts", []))
        raw = item_format.new_item(
            data[: self.max_bytes],
            source=SOURCE,
            uuid=uuid,
            extra={
                "mail_from": str(envelope.get("mail_from", ""))[:512],
                "rcpts": [r[:320] for r in rcpts[: self.max_rcpts]] or None,
                "rcpt_count": len(rcpts) if len(rcpts) > self.max_rcpts else None,
                "note": note[:1024] or None,
                "truncated": int(envelope.get("bytes", len(data))) > self.max_bytes or None,
                "bytes": int(envelope.get("bytes", len(data))),
            },
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.unclassified_key, raw)
        pipe.ltrim(self.unclassified_key, 0, keep - 1)
        await pipe.execute()
