"""One poster: take a batch, POST it until it is delivered or must be given up, settle it.

Where the events are at every moment (docs/ARCHITECTURE.md#queues): a batch is taken by moving its
items into this consumer's processing list in Redis, and they stay there (not in a buffer of ours)
while the batch is posted and, if the webhook fails, while we wait to try again. Only a 2xx answer
acks them, only a final verdict dead-letters them. If the process dies, the queue's reaper returns
them; on a graceful stop the service releases them to the front of the queue. So the memory used is
at most ``concurrency`` batches whatever the webhook does, and the backlog waits in Redis.

A batch is retried as a whole and in its order, and posters do not overtake each other on one
message (``ordering``), so a message's events arrive in the order they were queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.exceptions import RedisError

from manycore_common import trace
from manycore_common.consumer import Consumer
from manycore_common.item import Item

from . import batch, policy, tracing
from .metrics import DEAD_LETTERED, DELIVERED_BY_TYPE, FAILED, MALFORMED, PUSHED, RETRIES
from .ordering import OrderGate, Ticket
from .webhook import Webhook

log = logging.getLogger(__name__)

#: How long a take blocks on an empty queue before looking at ``stop`` again.
IDLE_WAIT_SECONDS = 0.2
#: Pause before trying Redis again after it failed.
REDIS_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class Retrying:
    initial: float
    maximum: float
    max_age: float


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, less if ``stop`` is set; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def unless_stopped(waiting: Awaitable[None], stop: asyncio.Event) -> bool:
    """Wait for ``waiting`` or ``stop``; True if ``waiting`` finished first."""
    work = asyncio.ensure_future(waiting)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stopper):
            task.cancel()
    return work.done() and not work.cancelled()


class Poster:
    """One of ``concurrency`` loops sharing one consumer (one processing list, one heartbeat)."""

    def __init__(
        self,
        name: str,
        consumer: Consumer,
        take_lock: asyncio.Lock,
        gate: OrderGate,
        webhook: Webhook,
        batch_size: int,
        retrying: Retrying,
        *,
        batch_wait: float = 0.0,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        trace_settings: trace.TraceSettings = trace.OFF,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.take_lock = take_lock
        self.gate = gate
        self.webhook = webhook
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.retrying = retrying
        self.clock = clock
        self.jitter = jitter
        self.trace_settings = trace_settings

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                taken = await self.take(stop)
            except (RedisError, OSError) as exc:
                log.warning("redis error, backing off", extra={"error": str(exc)})
                await pause(stop, REDIS_BACKOFF_SECONDS)
                continue
            if taken is None:
                continue
            items, ticket = taken
            try:
                await self.deliver(items, ticket, stop)
            finally:
                self.gate.settle(ticket)

    async def take(self, stop: asyncio.Event) -> tuple[list[Item], Ticket] | None:
        """The next batch: what is waiting, and if that is less than a full batch, what
        arrives within ``batch_wait`` too. One poster takes at a time (the lock is held while
        it waits for more), so batches are contiguous runs of the queue and tickets are
        issued in queue order."""
        async with self.take_lock:
            if stop.is_set():
                return None
            items = await self.consumer.take_batch(self.batch_size, timeout=IDLE_WAIT_SECONDS)
            if not items:
                return None
            if len(items) < self.batch_size and self.batch_wait > 0:
                # The taken items are in our processing list (heartbeat-protected) meanwhile.
                await pause(stop, self.batch_wait)
                # A failure here must not drop the batch already held (it would sit in our
                # processing list unsettled); Redis' trouble shows on the next step instead.
                with contextlib.suppress(RedisError, OSError):
                    more = await self.consumer.take_batch(self.batch_size - len(items), timeout=0)
                    items += more
            return items, self.gate.issue(i.uuid for i in items if i.uuid)

    async def deliver(self, items: list[Item], ticket: Ticket, stop: asyncio.Event) -> None:
        events, malformed = batch.split(items, self.clock())
        for bad in malformed:
            await self.bury_malformed(bad, stop)
        if not events or stop.is_set():
            return
        if ticket.blocked and not await unless_stopped(self.gate.wait_turn(ticket), stop):
            return
        attempt = 0
        # On stop, whatever is not settled stays in our processing list; the service then
        # releases it to the front of the queue.
        while events and not stop.is_set():
            attempt += 1
            outcome = await self.webhook.post(batch.body(events), len(events))
            if outcome.verdict == "delivered":
                await self.acknowledge(events, stop)
                await self.trace(events, "delivered", outcome.detail)
                return
            FAILED.inc(len(events))
            if outcome.verdict == "reject":
                reason = f"webhook rejected the batch: {outcome.detail}"
                await self.bury(events, "rejected", reason, stop)
                return
            old, events = batch.expired(events, self.clock(), self.retrying.max_age)
            if old:
                reason = (
                    f"expired: not delivered within max-event-age-seconds "
                    f"({self.retrying.max_age:g}); last attempt: {outcome.detail}"
                )
                await self.bury(old, "expired", reason, stop)
            if not events:
                return
            RETRIES.labels(outcome.reason).inc()
            await self.trace(events, "retry", outcome.detail)
            delay = policy.retry_delay(
                attempt, outcome, self.retrying.initial, self.retrying.maximum, self.jitter()
            )
            log.warning(
                "webhook POST failed, will retry",
                extra={
                    "poster": self.name,
                    "detail": outcome.detail,
                    "attempt": attempt,
                    "events": len(events),
                    "retry_in_seconds": round(delay, 3),
                },
            )
            await pause(stop, delay)

    async def trace(self, events: Sequence[batch.Event], webhook: str, detail: str) -> None:
        """The webhook's answer per event in ``trace:<uuid>``: one pipelined round trip per
        batch, after the settling step (a trace never holds up or undoes it)."""
        if self.trace_settings.enabled:
            records = tracing.records(events, webhook, detail, self.clock())
            await trace.write(self.consumer.queue.redis, self.trace_settings, records)

    # ------------------------------------------------------------------ settling in Redis

    async def redis_op(self, op: Callable[[], Awaitable[Any]], stop: asyncio.Event) -> Any:
        """Run a settling step, retrying while Redis fails. Settling must not be skipped: an
        unsettled item would sit in our processing list until the next stop. If we stop
        first, the items stay there and release (or the reaper) returns them."""
        while True:
            try:
                return await op()
            except (RedisError, OSError) as exc:
                log.warning("redis error while settling", extra={"error": str(exc)})
                if await pause(stop, REDIS_BACKOFF_SECONDS):
                    raise

    async def acknowledge(self, events: Sequence[batch.Event], stop: asyncio.Event) -> None:
        items = [e.item for e in events]
        still_held = await self.redis_op(partial(self.consumer.ack_many, items), stop)
        lost = len(items) - int(still_held)
        for event in events:
            counter = DELIVERED_BY_TYPE.get(event.kind)
            if counter is not None:
                counter.inc()
        PUSHED.inc(len(events))
        if lost:
            # The reaper returned them while we looked dead: they will be posted again, and
            # the receiver drops the duplicates by id.
            log.warning("delivered events were no longer held", extra={"count": lost})

    async def bury(
        self, events: Sequence[batch.Event], label: str, reason: str, stop: asyncio.Event
    ) -> None:
        # No `error` event for these: it would go to the same webhook that just refused.
        for event in events:
            await self.redis_op(partial(self.consumer.dead_letter, event.item, reason), stop)
        DEAD_LETTERED.labels(label).inc(len(events))
        await self.trace(events, label, reason)
        log.error(
            "events moved to the dead-letter list",
            extra={"poster": self.name, "events": len(events), "reason": reason},
        )

    async def bury_malformed(self, bad: batch.Malformed, stop: asyncio.Event) -> None:
        await self.redis_op(partial(self.consumer.dead_letter, bad.item, bad.reason), stop)
        MALFORMED.inc()
        DEAD_LETTERED.labels("malformed").inc()
        log.error(
            "malformed event moved to the dead-letter list",
            extra={"item": bad.item.id, "reason": bad.reason},
        )
