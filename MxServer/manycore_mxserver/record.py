"""Turning an analysis into what goes to Redis: events (each at most once), or the stored
unclassified message. ``events_for`` is pure; ``Recorder`` does the IO (the stream ids of the
tags, the once-markers, the unclassified lists).

Unclassified mail goes to one of two lists: the tagged one (a verified feedback tag proves
the message concerns mail we sent: what an operator reads to improve the rules) and the
untagged one (postmaster@ and abuse mail, which anyone on the Internet may send). Each list
is trimmed to its own share of ``mxserver.unclassified``, so a flood of untagged junk drops
only older untagged messages; per-client and per-uuid caps keep one sender, or one tag copied
from a message we sent, from filling even its own list."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import events, keyspace
from manycore_common import item as item_format
from manycore_common.config import SuppressionSettings, Unclassified
from manycore_common.queue import ReliableQueue
from manycore_common.suppressionmetrics import count_suppressions
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import emit_once_suppressing
from manycore_common.unsubscribe import once_marker

from .authenticate import Analysis, Finding, bounce_type
from .limits import RateLimiter
from .metrics import (
    NOT_KEPT,
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


def once_key(f: Finding) -> str:
    """The marker that makes an event happen once: per message and recipient (the tag's
    fingerprint, so address spellings do not matter)."""
    return keyspace.current().once(f.kind, f.tag.uuid, f.tag.fingerprint.hex())


def one_click_markers(found: Sequence[Finding]) -> set[str]:
    """HttpReceiver's once-markers a mailto unsubscribe sets too, so the mailto and the POST a
    provider sends for one person give one event: per (message, recipient) for the one-click
    tokens that name the recipient, and per message for the older ones (which name none)."""
    unsubscribes = [f for f in found if f.kind == "unsubscribe"]
    markers = {once_marker(f.tag.uuid) for f in unsubscribes}
    return markers | {once_marker(f.tag.uuid, f.rcpt) for f in unsubscribes if f.rcpt}


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
    """How many unclassified items a list keeps: ``max_count``, fewer when that many of the
    largest items would pass ``max_total_bytes``."""
    return min(max_count, max_total_bytes // (max_bytes + ITEM_OVERHEAD))


def unclassified_keeps(bounds: Unclassified) -> tuple[int, int]:
    """(tagged, untagged): how many items each list keeps. The untagged list gets
    ``untagged-share`` of the count and of the octets, the tagged list the rest, so the two
    together stay within ``max-count`` and ``max-total-bytes``."""
    untagged_count = int(bounds.max_count * bounds.untagged_share)
    untagged_total = int(bounds.max_total_bytes * bounds.untagged_share)
    tagged = unclassified_keep(
        bounds.max_count - untagged_count, bounds.max_bytes, bounds.max_total_bytes - untagged_total
    )
    return tagged, unclassified_keep(untagged_count, bounds.max_bytes, untagged_total)


@dataclass
class Recorder:
    redis: Redis
    event_queue: ReliableQueue
    unclassified: Unclassified = field(default_factory=Unclassified)
    senders: Senders = field(default_factory=Senders)
    suppression: SuppressionSettings = field(default_factory=SuppressionSettings)

    def __post_init__(self) -> None:
        bounds = self.unclassified
        self.keeps = unclassified_keeps(bounds)
        self.per_client = RateLimiter(bounds.untagged_per_client, bounds.window_seconds)
        self.per_uuid = RateLimiter(bounds.tagged_per_uuid, bounds.window_seconds)

    async def record(
        self,
        analysis: Analysis,
        data: bytes,
        envelope: dict[str, Any],
        uuid: str | None = None,
        client: str = "",
    ) -> str:
        """Write what the analysis calls for; returns a word for the SMTP reply. ``uuid`` (of
        a verified tag) goes with a stored unclassified message and picks its list;
        ``client`` (``limits.client_key``) is what the untagged cap counts by."""
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
            for marker in one_click_markers(analysis.findings):
                await self.redis.set(marker, "1", ex=ONCE_SECONDS)
            _count(analysis)
            return analysis.findings[0].kind
        if c.kind in ("delayed", "own-dsn"):
            _count(analysis)
            return c.kind
        note = c.note
        if c.kind in ("bounce", "autoreply", "spam-report"):
            UNPROVEN.labels(c.kind).inc()
            note = f"{c.kind} not tied to a recipient of ours by a verified tag"
        await self.store_unclassified(data, envelope, note, uuid, client)
        RECEIVED_UNCLASSIFIED.inc()
        return "unclassified"

    async def stream_ids(self, found: Sequence[Finding]) -> dict[str, str]:
        """The stream ids the Transformer registered for the tags' stream hashes."""
        fields = sorted({f.tag.stream_field for f in found if f.tag.stream_field})
        if not fields:
            return {}
        values = await self.redis.hmget(keyspace.current().feedback_streams(), fields)
        return {
            k: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for k, v in zip(fields, values, strict=True)
            if v is not None
        }

    def _admit(self, uuid: str | None, client: str) -> tuple[str, int] | None:
        """(key, items kept) of the list a message goes to, or None when it is not kept:
        its list keeps nothing, or its sender (its tag) had its share of this window."""
        ks = keyspace.current()
        tagged, untagged = self.keeps
        key, keep = (ks.unclassified(), tagged) if uuid else (ks.unclassified_untagged(), untagged)
        if keep == 0:
            return None
        if uuid and not self.per_uuid.allow(uuid):
            NOT_KEPT.labels("per-tag").inc()
            return None
        if not uuid and not self.per_client.allow(client):
            NOT_KEPT.labels("per-client").inc()
            return None
        return key, keep

    async def store_unclassified(
        self,
        data: bytes,
        envelope: dict[str, Any],
        note: str,
        uuid: str | None = None,
        client: str = "",
    ) -> None:
        """Newest first, bounded in count, in octets per item and in total octets, in the
        tagged list when ``uuid`` is given, else in the untagged one."""
        admitted = self._admit(uuid, client)
        if admitted is None:
            return
        key, keep = admitted
        limit = self.unclassified.max_bytes
        rcpts = list(envelope.get("rcpts", []))
        max_rcpts = self.unclassified.max_rcpts
        raw = item_format.new_item(
            data[:limit],
            source=SOURCE,
            uuid=uuid,
            extra={
                "mail_from": str(envelope.get("mail_from", ""))[:512],
                "rcpts": [r[:320] for r in rcpts[:max_rcpts]] or None,
                "rcpt_count": len(rcpts) if len(rcpts) > max_rcpts else None,
                "note": note[:1024] or None,
                "truncated": int(envelope.get("bytes", len(data))) > limit or None,
                "bytes": int(envelope.get("bytes", len(data))),
            },
        )
        # One key per MULTI: no script, so nothing to keep in one slot but the key itself.
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(key, raw)
        pipe.ltrim(key, 0, keep - 1)
        try:
            await pipe.execute()
        except (RedisError, OSError):
            # The sender gets 451 and retries: its retry must not use up another of its share.
            (self.per_uuid if uuid else self.per_client).give_back(uuid or client)
            raise
