"""The running PostfixLog (``service`` starts and stops it).

Tasks while running:

* feeders (``smtp-connections`` of them): take items (a few at once from a backlog, and
  claim them together: ``intake``), hand each to Postfix in one SMTP transaction, record
  queue id → message in Redis, then ack (pull → call → record → ack);
  they pull only while Postfix's active + incoming queues are below ``max-active-incoming``;
* the log loop: follower → parser → events (``processor``);
* the monitor: queue sizes for metrics and backpressure, and Postfix's health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import events
from manycore_common.consumer import Consumer
from manycore_common.item import Item
from manycore_common.queue import ReliableQueue, default_consumer_id
from manycore_common.suppressionmetrics import count_suppressions
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import Op

from . import feedbatch, intake, metrics, outcomes, requeue, scriptbatch
from .follower import LogFollower
from .injector import Injected, Injector, NotSent, PermanentFailure, TemporaryFailure
from .instance import PostfixError, PostfixInstance
from .intake import Intake, item_key
from .processor import SOURCE, LogProcessor
from .settings import Settings
from .state import Claim, Held, Message, State

log = logging.getLogger(__name__)

SERVICE = "postfixlog"
#: Pause after a Redis error, a temporary injection failure, or while Postfix's queue is full.
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
MONITOR_SECONDS = 0.5
#: Pause after a step, unless it read a backlog: under load the log side then handles the
#: lines of several messages per step (one read, one pipeline of scripts) instead of one or
#: two (issue 20: CPU per message). Events come up to this much later; deliveries do not.
LOG_IDLE_SECONDS = 0.1
#: A step that read this many lines or more goes on at once.
LOG_BACKLOG_LINES = 1000


class PostfixLog:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        incoming: ReliableQueue,
        event_queue: ReliableQueue,
        instance: PostfixInstance,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.incoming = incoming
        self.event_queue = event_queue
        self.instance = instance
        self.state = State(
            redis,
            settings.instance,
            event_queue.name,
            incoming.name,
            settings.state_ttl_seconds,
            replay_window=settings.replay_window_seconds,
            claim_seconds=settings.claim_seconds,
            trace_settings=settings.trace,
        )
        self.consumer: Consumer = incoming.consumer(default_consumer_id(SERVICE))
        self.intake = Intake(self.consumer, self.state, incoming)
        self.follower = LogFollower(settings.paths.logfile)
        self.processor = LogProcessor(
            self.state,
            self.follower,
            deferred_events=settings.deferred_events,
            echo=settings.echo_postfix_log,
            suppression=settings.suppression,
        )
        self.active_incoming = 0
        self.feed_stop = asyncio.Event()
        self.log_stop = asyncio.Event()
        self.expected_stop = False

    # ------------------------------------------------------------------ feeders

    async def feed(self) -> None:
        injector = Injector("127.0.0.1", self.settings.smtpd_port, self.settings.myhostname)
        batch_after = 0.0
        try:
            while not self.feed_stop.is_set():
                if self.active_incoming >= self.settings.max_active_incoming:
                    # Backpressure: mail waits in Redis, not in an overfull active queue.
                    metrics.BACKPRESSURE.set(1)
                    await asyncio.sleep(BACKOFF_SECONDS)
                    continue
                metrics.BACKPRESSURE.set(0)
                try:
                    items, batch_after = await self.intake.take(batch_after)
                    if items:
                        metrics.POLLED.inc(len(items))
                        await self.handle_batch(items, injector)
                except (RedisError, OSError) as exc:
                    log.warning("redis error, backing off", extra={"error": str(exc)})
                    await asyncio.sleep(BACKOFF_SECONDS)
        finally:
            await injector.close()

    async def handle_batch(self, items: list[Item], injector: Injector) -> None:
        """Claims of the whole batch in one round trip, then its one-recipient messages
        injected in one write and recorded in one more (``feedbatch``), then what that left
        injected and recorded item by item. Items not reached when the feeders stop stay in
        our processing list (the stop releases them to the queue) with their claims dropped;
        after a Redis error they are strays (``keep_alive`` returns them)."""
        ready: list[tuple[Item, intake.Envelope]] = []
        for n, item in enumerate(items):
            envelope = intake.envelope_of(item)
            if envelope is not None:
                ready.append((item, envelope))
                continue
            try:
                await self.reject(item, "the item has no X-ReturnPathIb or no recipients")
            except (RedisError, OSError):
                for other in [*(i for i, _ in ready), *items[n + 1 :]]:
                    self.consumer.forget(other)
                raise
        claims = await self.intake.claim_many([item for item, _ in ready])
        todo = [(i, e, c) for (i, e), c in zip(ready, claims, strict=True) if c is not None]
        todo, refused = await self.inject_together(todo, injector)
        while todo:
            item, envelope, claim = todo[0]
            try:
                if self.feed_stop.is_set():
                    await self.unclaim(item, str(claim.holder))
                elif id(item) in refused:
                    await self.refuse(item, refused[id(item)], str(claim.holder))
                else:
                    await self.handle(item, envelope, claim, injector)
            except (RedisError, OSError):
                for later, _, later_claim in todo[1:]:
                    self.consumer.forget(later)
                    await self.unclaim(later, str(later_claim.holder))
                raise
            todo.pop(0)

    async def inject_together(
        self, todo: list[feedbatch.Todo], injector: Injector
    ) -> tuple[list[feedbatch.Todo], dict[int, PermanentFailure]]:
        """The batch in one write and its records in one round trip (``feedbatch``); what
        is left for ``handle``, and the items Postfix refused for good (by ``id``)."""
        if self.feed_stop.is_set():
            return todo, {}
        together = await feedbatch.inject_together(injector, todo)
        pairs = list(zip(todo, together, strict=True))
        done = [(i, e, c, r) for (i, e, c), r in pairs if isinstance(r, Injected)]
        await self.record_many(
            [(i, feedbatch.message_of(i, e), r, str(c.holder)) for i, e, c, r in done]
        )
        refused = {id(t[0]): r for t, r in pairs if isinstance(r, PermanentFailure)}
        return [t for t, r in pairs if not isinstance(r, Injected)], refused

    async def refuse(self, item: Item, exc: PermanentFailure, claimer: str) -> None:
        metrics.INJECT_FAILURES.labels("permanent").inc()
        await self.reject(item, f"postfix refused the message: {exc}")
        await self.unclaim(item, claimer)

    async def unclaim(self, item: Item, claimer: str) -> None:
        with contextlib.suppress(RedisError, OSError):  # else it runs out
            await self.state.unclaim(item_key(item), claimer)

    async def handle(
        self, item: Item, envelope: intake.Envelope, claim: Claim, injector: Injector
    ) -> None:
        msg, data = feedbatch.message_of(item, envelope), envelope[2]
        claimer = str(claim.holder)
        injected = await self.inject(item, injector, msg, data, claim)
        if injected is None:
            await self.unclaim(item, claimer)
            return
        await self.record(item, msg, injected, claimer)

    async def inject(
        self, item: Item, injector: Injector, msg: Message, data: bytes, claim: Claim
    ) -> Injected | None:
        """Hand over, retrying temporary failures in place (the item stays ours; nothing
        was queued). None when the item was settled otherwise or the stop came first."""
        backoff = BACKOFF_SECONDS
        while True:
            try:
                if not claim.fresh(time.monotonic()):
                    claim = await self.intake.ask_claim(item, str(claim.holder))
                    if claim.status != "mine":
                        await self.leave(item, claim)
                        return None
                return await injector.send(msg.return_path, list(msg.rcpts), data, _guard(claim))
            except NotSent:
                continue  # a stall between the check above and DATA: claim again
            except PermanentFailure as exc:
                metrics.INJECT_FAILURES.labels("permanent").inc()
                await self.reject(item, f"postfix refused the message: {exc}")
                return None
            except TemporaryFailure as exc:
                metrics.INJECT_FAILURES.labels("temporary").inc()
                log.warning("postfix did not take the message", extra={"error": str(exc)})
                if self.feed_stop.is_set():
                    return None  # still held: released to the queue by the stop
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def leave(self, item: Item, claim: Claim) -> None:
        """Our claim ran out (a stall longer than half of it) and the item is no longer ours
        to inject: injected meanwhile (ack), or claimed by another consumer (put back, which
        does nothing if the reaper already gave it away)."""
        log.warning(
            "claim lost before injecting", extra={"uuid": item.uuid, "holder": claim.holder}
        )
        if claim.status == "done":
            await self.consumer.ack(item)
        else:
            await self.consumer.hand_over(item, self.incoming, item.raw)

    async def record(self, item: Item, msg: Message, injected: Injected, claimer: str) -> None:
        await self.record_many([(item, msg, injected, claimer)])

    async def record_many(self, done: list[tuple[Item, Message, Injected, str]]) -> None:
        """Per injection, queue id → message, the refused recipients' events and the ack,
        each in one script, all in one round trip. Retried until Redis takes them: the
        messages are in Postfix, so sending them again is not an option (a script that ran
        already answers 0 the second time)."""
        if not done:
            return
        plans = [self.record_plan(*entry) for entry in done]
        backoff = BACKOFF_SECONDS
        while True:
            try:
                results = await scriptbatch.run(self.redis, [p[0] for p in plans])
                break
            except (RedisError, OSError) as exc:
                log.warning("cannot record an injection, retrying", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        for (_, refusals, suppress, accepted), (item, _, injected, _), result in zip(
            plans, done, results, strict=True
        ):
            if int(result) == 1:
                if injected.queue_id is not None:
                    self.processor.remember(injected.queue_id, accepted)
                for event in refusals:
                    metrics.count_event(event)
                count_suppressions(suppress, SOURCE)
            if injected.queue_id is not None:
                metrics.TO_POSTFIX.inc()
            log.debug(
                "queued by postfix",
                extra={"uuid": item.uuid, "queue_id": injected.queue_id, "refused": len(refusals)},
            )
            self.consumer.settled(item)  # the record acked it, in the same step

    def record_plan(
        self, item: Item, msg: Message, injected: Injected, claimer: str
    ) -> tuple[scriptbatch.Call, list[dict[str, Any]], list[Op], Message]:
        """The record's script call, the refusal events, their suppression ops and the
        message as recorded (its accepted recipients)."""
        now = time.time()
        refusals = [
            outcomes.refusal_event(msg, r.rcpt, r.code, r.reply, now) for r in injected.refused
        ]
        raws = [events.encode_event(e, source=SOURCE) for e in refusals]
        domains = [msg.from_domain] if msg.from_domain else []
        suppress = [
            op for e in refusals for op in ops_for_event(e, domains, self.settings.suppression)
        ]
        accepted = replace(msg, rcpts=injected.accepted)
        held = Held(claimer, self.consumer.processing_key, item.raw)
        call = self.state.record_call(
            item_key(item),
            injected.queue_id,
            accepted,
            raws,
            held,
            suppress,
            feedbatch.injection_trace(item, injected, self.settings),
        )
        return call, refusals, suppress, accepted

    async def reject(self, item: Item, reason: str) -> None:
        event = events.error_event(SERVICE, reason, uuid=item.uuid, streamid=item.stream_id)
        raw = events.encode_event(event, source=SOURCE)
        await self.consumer.dead_letter(item, reason, (self.event_queue, raw))
        log.warning("message dead-lettered", extra={"uuid": item.uuid, "reason": reason})

    def apply_settings(self, settings: Settings) -> None:
        """A live config change (``reload``): read from here on by feeders, log and stop."""
        self.settings = settings
        self.processor.deferred_events = settings.deferred_events
        self.processor.echo = settings.echo_postfix_log

    async def start_postfix(self) -> None:
        """Stop what a previous run left, undo what its stop could not finish, start."""
        await self.instance.stop_leftovers()
        await requeue.clean_up_after_stop(self.instance, self.state)
        await self.instance.start()

    # ------------------------------------------------------------------ log and monitor

    async def follow_log(self) -> None:
        while not self.log_stop.is_set():
            try:
                read = await self.processor.step()
                self.maybe_rotate()
            except (RedisError, OSError) as exc:
                log.warning("log processing paused", extra={"error": str(exc)})
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            if read < LOG_BACKLOG_LINES:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.log_stop.wait(), LOG_IDLE_SECONDS)

    def maybe_rotate(self) -> None:
        """Rotate once everything in the file is processed: rename, then SIGHUP master so
        postlogd reopens the path (what postfix(1) ``logrotate`` does, minus compressing,
        which would hide the file from us). The reload restarts qmgr, which delays by 60 s
        any message a delivery agent still has open (qmgr_active.c, "file is locked"), so
        the rotation waits for a moment without deliveries, unless the file grew to twice
        the limit."""
        limit = self.settings.log_rotate_bytes
        if not limit or self.processor.waiting or self.processor.unread:
            return
        at_end, size = self.follower.at_end_of_current()
        if not at_end or size < limit:
            return
        # Counted now, not the monitor's figure: that may be half a second old.
        counts = self.instance.queue_counts()
        quiet = counts["active"] + counts["incoming"] == 0
        if quiet or size >= 2 * limit:
            path = self.settings.paths.logfile
            os.replace(path, path.with_name(path.name + ".1"))
            self.instance.reopen_log()
            metrics.LOG_ROTATIONS.inc()
            log.info("log file rotated", extra={"bytes": size})

    def update_queue_metrics(self) -> dict[str, int]:
        counts = self.instance.queue_counts()
        for queue, count in counts.items():
            metrics.QUEUE_MESSAGES[queue].set(count)
        self.active_incoming = counts["active"] + counts["incoming"]
        return counts

    async def monitor(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.update_queue_metrics)
            except OSError as exc:
                log.warning("cannot count postfix's queue", extra={"error": str(exc)})
            if not self.instance.running and not self.expected_stop:
                log.error("postfix master exited; starting it again")
                try:
                    await self.instance.stop()
                    await self.start_postfix()
                except (PostfixError, RedisError, OSError) as exc:
                    log.error("cannot start postfix again", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MONITOR_SECONDS)

    # ------------------------------------------------------------------ stop

    async def drain_postfix(self) -> None:
        """Let deliveries in progress finish (bounded): deferred mail is put on hold so that
        no new attempt starts, then wait for the active and incoming queues to empty."""
        with contextlib.suppress(PostfixError):
            await self.instance.hold_deferred()
        deadline = time.monotonic() + self.settings.stop_grace_seconds
        while time.monotonic() < deadline:
            counts = await asyncio.to_thread(self.update_queue_metrics)
            if counts["active"] + counts["incoming"] == 0:
                return
            await asyncio.sleep(0.1)
        log.warning("stop grace period over with deliveries in progress; they are cut")


def _guard(claim: Claim) -> Callable[[], bool]:
    """Asked right before DATA: is our claim still fresh?"""
    return lambda: claim.fresh(time.monotonic())
