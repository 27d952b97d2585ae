"""The front door shared by Receiver and HttpReceiver: validate a complete message, wrap it
in a queue item and put it on P0 or P1, counting what happened under the README's metric
names. The caller answers its client only after ``accept`` returns
(docs/ARCHITECTURE.md#acknowledged)."""

from __future__ import annotations

import logging

from prometheus_client import Counter
from redis.exceptions import RedisError

from . import item as item_format
from .config import Config
from .grouppush import GroupPusher
from .message import PRIORITY_HIGH, REJECT_REASONS, Accepted, MessageRejected, validate
from .queue import QueueFull, ReliableQueue

log = logging.getLogger(__name__)

TEMPORARY_REASONS = ("redis-unavailable", "queue-full")
#: The client did not finish sending the message in time (HttpReceiver's body timeout).
CLIENT_REASONS = ("timeout",)

ENQUEUED = Counter("nbr_emails_enqueued", "Number of emails accepted and put on Redis")
RECIPIENTS = Counter(
    "nbr_recipients",
    "Number of recipients extracted from emails put on Redis (expected delivery events)",
)
DROPPED = Counter(
    "nbr_dropped_emails",
    "Number of emails that could not be processed, by reason",
    ["reason"],
)
for _reason in (*REJECT_REASONS, *TEMPORARY_REASONS, *CLIENT_REASONS):
    DROPPED.labels(_reason)


class TemporarilyUnavailable(Exception):
    """Redis cannot take the message right now; the client should retry later."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


class Intake:
    def __init__(self, primary: ReliableQueue, default: ReliableQueue, max_size: int) -> None:
        self.primary = primary
        self.default = default
        self.max_size = max_size
        # Concurrent connections share Redis round trips (see grouppush).
        self._pushers = {q.name: GroupPusher(q) for q in (primary, default)}

    @classmethod
    def from_config(cls, config: Config, redis: object, max_size: int) -> Intake:
        rq = config.global_.reliable_queue
        names = rq.queue_names

        def queue(name: str) -> ReliableQueue:
            return ReliableQueue(
                redis,  # type: ignore[arg-type]
                name,
                max_attempts=rq.max_attempts,
                heartbeat_timeout=rq.heartbeat_timeout_seconds,
                high_water_mark=rq.high_water_mark,
                doorbell=True,  # the Transformer waits on P0 and P1 at once
            )

        return cls(queue(names.primary_queue), queue(names.default_queue), max_size)

    def queue_for(self, accepted: Accepted) -> ReliableQueue:
        return self.primary if accepted.priority == PRIORITY_HIGH else self.default

    def check(self, data: bytes) -> Accepted:
        """Validate; a refusal is counted here so each front door counts it the same way."""
        try:
            return validate(data, self.max_size)
        except MessageRejected as exc:
            DROPPED.labels(exc.reason).inc()
            raise

    async def accept(self, data: bytes, *, source: str) -> tuple[Accepted, ReliableQueue]:
        """Validate and enqueue. Raises MessageRejected (permanent) or TemporarilyUnavailable."""
        accepted = self.check(data)
        queue = self.queue_for(accepted)
        raw = item_format.new_item(
            data,
            source=source,
            uuid=accepted.uuid,
            stream_id=accepted.stream_id,
            priority=accepted.priority,
            rcpts=list(accepted.recipients),
        )
        try:
            await self._pushers[queue.name].push(raw)
        except QueueFull:
            DROPPED.labels("queue-full").inc()
            raise TemporarilyUnavailable("queue-full", "Queue is full, try again later") from None
        except (RedisError, OSError) as exc:
            DROPPED.labels("redis-unavailable").inc()
            log.warning("redis push failed", extra={"queue": queue.name, "error": str(exc)})
            raise TemporarilyUnavailable(
                "redis-unavailable", "Queue storage unavailable, try again later"
            ) from None
        ENQUEUED.inc()
        RECIPIENTS.inc(len(accepted.recipients))
        log.info(
            "message enqueued",
            extra={
                "uuid": accepted.uuid,
                "queue": queue.name,
                "source": source,
                "recipients": len(accepted.recipients),
                "bytes": len(data),
            },
        )
        return accepted, queue
