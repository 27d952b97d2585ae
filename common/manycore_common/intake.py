"""The front door shared by Receiver and HttpReceiver: validate a complete message, wrap it
in a queue item and put it on P0 or P1, counting what happened under the README's metric
names. The caller answers its client only after ``accept`` returns
(docs/ARCHITECTURE.md#acknowledged).

With an idempotency window (``common-config.idempotency-window-seconds``), each message
claims its X-Uuid (or the HTTP request's Idempotency-Key) in the same script as its push
(``idempotency``): a message whose claim is held is not queued again, and ``accept``
answers it as the first one was answered (same queue), marked ``duplicate``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter
from redis.exceptions import RedisError

from . import item as item_format
from .config import Config
from .grouppush import GroupPusher
from .idempotency import (
    DEFAULT_WINDOW_SECONDS,
    claim_for,
    key_reused,
    read_claim,
    reused_for_another,
)
from .message import PRIORITY_HIGH, REJECT_REASONS, Accepted, MessageRejected, validate
from .queue import QueueFull, ReliableQueue, configured

log = logging.getLogger(__name__)

TEMPORARY_REASONS = ("redis-unavailable", "queue-full")
#: The client did not finish sending the message in time (HttpReceiver's body timeout).
CLIENT_REASONS = ("timeout",)
#: HttpReceiver's Idempotency-Key: malformed (400), or reused for another message (422).
IDEMPOTENCY_REASONS = ("bad-idempotency-key", "idempotency-key-reused")

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
for _reason in (*REJECT_REASONS, *TEMPORARY_REASONS, *CLIENT_REASONS, *IDEMPOTENCY_REASONS):
    DROPPED.labels(_reason)


class TemporarilyUnavailable(Exception):
    """Redis cannot take the message right now; the client should retry later."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``accept`` did: ``accepted`` is the message as validated; ``queue`` is where it
    went, or for a ``duplicate`` where the first submission went."""

    accepted: Accepted
    queue: ReliableQueue
    duplicate: bool = False


class Intake:
    def __init__(
        self,
        primary: ReliableQueue,
        default: ReliableQueue,
        max_size: int,
        idempotency_window: int = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        self.primary = primary
        self.default = default
        self.max_size = max_size
        #: Seconds a message's claim is kept; 0: no claims, every message is queued.
        self.idempotency_window = idempotency_window
        # Concurrent connections share Redis round trips (see grouppush).
        self._pushers = {q.name: GroupPusher(q) for q in (primary, default)}

    @classmethod
    def from_config(cls, config: Config, redis: object, max_size: int) -> Intake:
        rq = config.global_.reliable_queue
        names = rq.queue_names

        def queue(name: str) -> ReliableQueue:
            # doorbell: the Transformer waits on P0 and P1 at once.
            return configured(redis, name, rq, bounded=True, doorbell=True)  # type: ignore[arg-type]

        window = config.customer.common_config.idempotency_window_seconds
        return cls(queue(names.primary_queue), queue(names.default_queue), max_size, window)

    def queue_for(self, priority: int) -> ReliableQueue:
        return self.primary if priority == PRIORITY_HIGH else self.default

    def check(self, data: bytes) -> Accepted:
        """Validate; a refusal is counted here so each front door counts it the same way."""
        try:
            return validate(data, self.max_size)
        except MessageRejected as exc:
            DROPPED.labels(exc.reason).inc()
            raise

    async def accept(
        self,
        data: bytes,
        *,
        source: str,
        idempotency_key: str | None = None,
        login: str | None = None,
    ) -> Submitted:
        """Validate and enqueue, unless the message's claim is held (a duplicate). Raises
        MessageRejected (permanent) or TemporarilyUnavailable. ``idempotency_key`` (an
        HTTP request's, checked) is claimed for ``login`` instead of the X-Uuid."""
        accepted = self.check(data)
        queue = self.queue_for(accepted.priority)
        raw = item_format.new_item(
            data,
            source=source,
            uuid=accepted.uuid,
            stream_id=accepted.stream_id,
            priority=accepted.priority,
            rcpts=list(accepted.recipients),
        )
        claim = claim_for(
            accepted.uuid,
            accepted.priority,
            self.idempotency_window,
            idempotency_key=idempotency_key,
            login=login,
            body=data,
        )
        try:
            held = await self._pushers[queue.name].push(raw, claim)
        except QueueFull:
            DROPPED.labels("queue-full").inc()
            raise TemporarilyUnavailable("queue-full", "Queue is full, try again later") from None
        except (RedisError, OSError) as exc:
            DROPPED.labels("redis-unavailable").inc()
            log.warning("redis push failed", extra={"queue": queue.name, "error": str(exc)})
            raise TemporarilyUnavailable(
                "redis-unavailable", "Queue storage unavailable, try again later"
            ) from None
        if held is not None:
            return self._duplicate(accepted, held, source, data)
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
        return Submitted(accepted, queue)

    def _duplicate(self, accepted: Accepted, held: bytes, source: str, data: bytes) -> Submitted:
        """The answer for a message whose claim was held: the first submission's queue, or
        a refusal when an Idempotency-Key comes back with another X-Uuid or body."""
        earlier = read_claim(held)
        if reused_for_another(earlier, accepted.uuid, data):
            DROPPED.labels("idempotency-key-reused").inc()
            raise key_reused(earlier.uuid or accepted.uuid, accepted.uuid)
        queue = self.queue_for(earlier.priority)
        log.info(
            "duplicate not queued again",
            extra={"uuid": accepted.uuid, "queue": queue.name, "source": source},
        )
        return Submitted(accepted, queue, duplicate=True)
