"""``manycore-transformer``: pull from P0 before P1, transform, hand over to the Postfix queue.

The loop is pull → transform → push/ack. Transforming (mostly the RSA signature) is CPU
work, so with ``workers`` > 1 it runs in a pool of processes while the event loop keeps
``workers`` batches in flight; Redis IO and metrics stay in the main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import events, redisconn, redisready, trace
from manycore_common.config import Config, TransformerSection
from manycore_common.consumer import Consumer
from manycore_common.consuming import consuming
from manycore_common.health import HealthServer
from manycore_common.item import Item
from manycore_common.lifecycle import run_service
from manycore_common.loops import until_stop_or_crash
from manycore_common.queue import ReliableQueue, configured, default_consumer_id, wait_for_doorbells
from manycore_common.suppressionstore import SuppressionStore

from . import settings as settings_module
from .batch import SOURCE, Job, init_worker, item_rcpts, split_items, transform_batch
from .identity import TransformError
from .metrics import COPIES, ERRORS, POLLED_DEFAULT, POLLED_PRIMARY, PUSHED, SIGN_SECONDS, WARNINGS
from .streams import StreamRegistry
from .suppress import Checker, PendingCheck, refresh_size, without_dropped
from .transform import Settings

log = logging.getLogger(__name__)

SERVICE = SOURCE
#: A transform's outcome: ("ok", Transformed) or ("error", TransformError).
Result = tuple[str, Any]
#: How long an idle loop sleeps on P0's and P1's doorbells before looking again. A push wakes
#: it at once; this bounds only items that come back without one (reaper, requeue) and how
#: long a stop waits.
IDLE_WAIT_SECONDS = 1.0
#: Pause when the Postfix queue is above its high-water mark or Redis fails.
BACKOFF_SECONDS = 0.5
#: How often the suppression list's size gauge is read from Redis.
SIZE_REFRESH_SECONDS = 15.0
#: How long the Postfix queue's length, once read, stands for it in the high-water check
#: (less what we pushed since). An LLEN before every batch was one more Redis round trip
#: per message at the light load where batches hold one message (bench/README.md).
TARGET_SIZE_SECONDS = 0.5


@dataclass(frozen=True)
class Prepared:
    section: TransformerSection
    spec: settings_module.SettingsSpec


def prepare(config: Config) -> Prepared:
    section: TransformerSection = config.require("transformer")
    spec, warnings = settings_module.read_spec(config)
    for reason, text in warnings:
        WARNINGS.labels(reason).inc()
        log.warning(text, extra={"reason": reason})
    return Prepared(section, spec)


class HighWater:
    """Whether the Postfix queue is below its high-water mark, for a loop that pushes to it.
    Its length is read from Redis at most every ``TARGET_SIZE_SECONDS``, or at once when
    what this loop pushed since the last read could have reached the mark. Other loops' and
    pods' pushes go unseen that long, so the mark can be passed by about half a second of
    their output, no more."""

    def __init__(self, target: ReliableQueue, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.clock = clock
        self.size = 0  # when last read
        self.read_at = -math.inf
        self.since = 0  # pushed by us since

    def pushed(self, count: int) -> None:
        self.since += count

    async def below(self) -> bool:
        hwm = self.target.high_water_mark
        if not hwm:
            return True
        now = self.clock()
        if now - self.read_at >= TARGET_SIZE_SECONDS or self.size + self.since >= hwm:
            self.size = await self.target.size()
            self.read_at, self.since = now, 0
        return self.size + self.since < hwm


class Worker:
    """One pull → transform → hand-over loop. Several run concurrently."""

    def __init__(
        self,
        primary: Consumer,
        default: Consumer,
        target: ReliableQueue,
        event_queue: ReliableQueue,
        section: TransformerSection,
        executor: ProcessPoolExecutor | None,
        settings: Settings,
        streams: StreamRegistry,
        checker: Checker | None = None,
        trace_settings: trace.TraceSettings = trace.OFF,
    ) -> None:
        self.trace_settings = trace_settings
        self.primary = primary
        self.default = default
        self.target = target
        self.event_queue = event_queue
        self.section = section
        self.executor = executor
        self.settings = settings
        self.streams = streams
        self.checker = checker
        self.streak = 0
        self.high_water = HighWater(target)

    async def take(self) -> tuple[list[Item], Consumer | None]:
        """A batch from P0 before P1, except that after ``primary-per-default`` P0 messages
        in a row a waiting P1 batch goes first."""
        n = self.section.batch_size
        order = [self.primary, self.default]
        if self.streak >= self.section.primary_per_default:
            order.reverse()
        for consumer in order:
            items = await consumer.take_batch(n, timeout=0)
            if items:
                if len(items) == n:
                    # More waiting: wake a sibling. Only a wake-up, so a failure must not
                    # make us drop the batch we now hold.
                    with contextlib.suppress(RedisError, OSError):
                        await consumer.queue.ring_doorbell()
                return items, consumer
        # Both empty: sleep until either is pushed to. Blocking on P0 alone left a P1
        # message waiting up to the whole wait (bench/README.md has the measurement).
        await wait_for_doorbells(
            self.primary.queue.redis, [self.primary.queue, self.default.queue], IDLE_WAIT_SECONDS
        )
        return [], None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            items: list[Item] = []
            consumer: Consumer | None = None
            try:
                if not await self.high_water.below():
                    # Backpressure: PostfixLog is behind; leave mail in P0/P1, where the
                    # receivers' own high-water mark eventually pushes back on clients.
                    await asyncio.sleep(BACKOFF_SECONDS)
                    continue
                items, consumer = await self.take()
                if consumer is None:
                    continue
                await self.process(items, consumer)
            except Exception as exc:
                redis_error = isinstance(exc, (RedisError, OSError))
                if redis_error:
                    log.warning("redis error, backing off", extra={"error": str(exc)})
                if consumer is not None:
                    # What the failed step left in our processing list goes back to the
                    # queue (Consumer.recover_strays, within two heartbeats): we live on,
                    # so the reaper never would, and nothing here takes it again. Settled
                    # items are no longer there; a hand-over whose reply was lost moved
                    # its item, so nothing is sent twice.
                    for item in items:
                        consumer.forget(item)
                if not redis_error:
                    raise  # _transform stops the service; what we hold is released then
                await asyncio.sleep(BACKOFF_SECONDS)

    async def process(self, items: list[Item], consumer: Consumer) -> None:
        if consumer is self.primary:
            POLLED_PRIMARY.inc(len(items))
            self.streak += len(items)
        else:
            POLLED_DEFAULT.inc(len(items))
            self.streak = 0
        now = time.time()
        jobs = [(i.payload, item_rcpts(i)) for i in items]
        # The suppression look-up goes out before the batch is signed and its answer is read
        # after, so the loop never waits on Redis for it (README.md, "Suppression list").
        pending = await self.checker.send(jobs) if self.checker is not None else None
        try:
            results = await self.transform(jobs, now)
        except BaseException:
            if pending is not None:
                await pending.abandon()
            raise
        if pending is not None:
            items, results = await self.drop_suppressed(items, results, pending, consumer, now)
            if not items:
                return
        splits: list[tuple[Item, list[bytes]]] = []
        for item, (status, result) in zip(items, results, strict=True):
            if status == "error":
                await self.reject(consumer, item, result)
                continue
            SIGN_SECONDS.observe(result.sign_seconds)
            if result.rcpts_from_headers:
                WARNINGS.labels("recipients-from-headers").inc()
            splits.append((item, split_items(item.header, result)))
        await self.register_streams([r.stream_id for status, r in results if status == "ok"])
        moved, pushed = await consumer.hand_over_split(splits, self.target)
        self.high_water.pushed(pushed)
        PUSHED.inc(moved)
        COPIES.inc(pushed)
        await trace.write(
            self.target.redis,
            self.trace_settings,
            trace.transformed(splits, consumer.queue.name, now),
        )
        if moved < len(splits):
            # The reaper had given some back (we looked dead); they will be done again.
            log.warning("items no longer held", extra={"count": len(splits) - moved})

    async def transform(self, jobs: list[Job], now: float) -> list[Result]:
        if self.executor is None:
            return transform_batch(jobs, now, self.settings)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, transform_batch, jobs, now)

    async def drop_suppressed(
        self,
        items: list[Item],
        results: list[Result],
        pending: PendingCheck,
        consumer: Consumer,
        now: float,
    ) -> tuple[list[Item], list[Result]]:
        """The items and results left once suppressed recipients are dropped (see
        suppress.py): their events pushed, the items with no recipient left acked.

        The verdict decides first, as when the check ran before the transform: a message
        with every recipient suppressed is acked, even if its transform failed; one whose
        transform failed with only some suppressed is transformed again for the others
        (what it was before, and e.g. ``too-many-copies`` may pass with fewer)."""
        verdicts = await pending.verdicts()
        dropped = [e for v in verdicts for e in v.events]
        if not dropped:
            return items, results
        raws = [events.encode_event(e, source=SERVICE) for e in dropped]
        await self.event_queue.push_many(raws)
        kept: list[tuple[Item, Result]] = []
        done: list[Item] = []
        again: list[tuple[Item, Job]] = []
        for item, result, verdict in zip(items, results, verdicts, strict=True):
            if verdict.keep is None:  # nothing dropped
                kept.append((item, result))
            elif not verdict.keep:
                done.append(item)
            elif result[0] == "error":
                again.append((item, (item.payload, verdict.keep)))
            else:
                kept.append((item, ("ok", without_dropped(result[1], verdict))))
        if again:
            redone = await self.transform([job for _, job in again], now)
            kept += zip([item for item, _ in again], redone, strict=True)
        await consumer.ack_many(done)
        return [k[0] for k in kept], [k[1] for k in kept]

    async def register_streams(self, stream_ids: list[str | None]) -> None:
        """Record new stream ids for MxServer before their first message leaves. A failure
        does not hold the mail: the stream is tried again with its next message, and until
        then MxServer's events for it lack ``streamid`` (a warning counts it)."""
        try:
            clashes = await self.streams.ensure(stream_ids)
        except (RedisError, OSError) as exc:
            WARNINGS.labels("stream-registry").inc()
            log.warning("could not record stream ids", extra={"error": str(exc)})
            return
        if clashes:
            WARNINGS.labels("stream-hash-collision").inc(len(clashes))

    async def reject(self, consumer: Consumer, item: Item, error: TransformError) -> None:
        """Dead-letter the item with an `error` event, in one step."""
        ERRORS.labels(error.reason).inc()
        uuid = error.uuid or item.uuid
        event = events.error_event(SERVICE, error.text, uuid=uuid, streamid=item.stream_id)
        raw = events.encode_event(event, source=SERVICE)
        await consumer.dead_letter(item, f"{error.reason}: {error.text}", (self.event_queue, raw))
        log.warning("message dead-lettered", extra={"uuid": uuid, "reason": error.reason})


@dataclass(frozen=True)
class Queues:
    """P0 and P1 (taken from, P0 first), the Postfix queue and the event queue."""

    consumers: tuple[Consumer, Consumer]
    target: ReliableQueue
    events: ReliableQueue


def _queues(config: Config, redis: Redis) -> Queues:
    rq = config.global_.reliable_queue
    primary = configured(redis, rq.queue_names.primary_queue, rq, doorbell=True)
    default = configured(redis, rq.queue_names.default_queue, rq, doorbell=True)
    consumer_id = default_consumer_id(SERVICE)
    return Queues(
        (primary.consumer(consumer_id), default.consumer(consumer_id)),
        configured(redis, config.global_.postfix.incoming_queue_name, rq, bounded=True),
        configured(redis, config.global_.backdata.queue_name, rq),
    )


async def serve(config: Config, prepared: Prepared, stop: asyncio.Event) -> None:
    section = prepared.section
    redis = redisconn.connect(section.reliable_queue.redis, blocking_timeout=IDLE_WAIT_SECONDS)
    queues = _queues(config, redis)
    consumers = queues.consumers
    executor = _executor(section.workers, prepared.spec)
    settings = settings_module.build(prepared.spec)
    streams = StreamRegistry(redis)
    checker = Checker(SuppressionStore(redis), config.customer.common_config.suppression)
    tracing = trace.TraceSettings.of(config.global_.trace)
    args = (*consumers, queues.target, queues.events, section, executor, settings, streams)
    workers = [Worker(*args, checker, tracing) for _ in range(section.workers)]

    health = HealthServer(section.prometheus, {"redis": redisready.answers(redis)})
    await health.start()
    try:
        async with consuming(consumers, stop) as registered:
            if registered:
                await _transform(workers, checker.store, stop)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        await health.stop()
        await redis.aclose()


async def _transform(workers: list[Worker], store: SuppressionStore, stop: asyncio.Event) -> None:
    """Run the workers until ``stop``, then let them finish the batches in hand (what is
    still held is then released by ``consuming``)."""
    inner_stop = asyncio.Event()
    loops = [asyncio.create_task(w.run(inner_stop)) for w in workers]
    loops.append(asyncio.create_task(_watch_size(store, inner_stop)))
    try:
        log.info("transforming", extra={"workers": len(workers), "consumer": workers[0].primary.id})
        # A loop that dies of anything but a Redis error (a signing process killed: the
        # pool is broken for good) stops the service rather than leaving it up idle.
        await until_stop_or_crash(stop, loops, "a transform loop")
    finally:
        inner_stop.set()
        await asyncio.gather(*loops, return_exceptions=True)


async def _watch_size(store: SuppressionStore, stop: asyncio.Event) -> None:
    """The suppression list's size gauge, from its counter in Redis (never a scan)."""
    while not stop.is_set():
        with contextlib.suppress(RedisError, OSError):
            await refresh_size(store)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SIZE_REFRESH_SECONDS)


def _executor(workers: int, spec: settings_module.SettingsSpec) -> ProcessPoolExecutor | None:
    """The signing pool: None for one worker, which then signs in the event loop's process."""
    if workers <= 1:
        return None
    # spawn, not fork: a forked child would inherit the event loop and Redis sockets.
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(spec,),
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve)
