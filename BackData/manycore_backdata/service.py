"""``manycore-backdata``: POST events from the event queue to the customer's webhook.

``concurrency`` posters share one consumer of the event queue; each takes a batch, POSTs it
until it is delivered, rejected or too old, and settles it in Redis (``poster``). A monitor
reports the age of the oldest waiting event. On SIGTERM the posters finish the POST in flight
and every batch not yet delivered goes back to the front of the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from manycore_common import redisconn, redisready
from manycore_common.config import BackDataSection, Config
from manycore_common.consumer import Consumer
from manycore_common.consuming import consuming
from manycore_common.health import HealthServer
from manycore_common.lifecycle import run_service
from manycore_common.loops import until_stop_or_crash
from manycore_common.queue import ReliableQueue, configured, default_consumer_id
from manycore_common.trace import TraceSettings

from . import batch
from .metrics import HELD, OLDEST_AGE
from .ordering import OrderGate
from .poster import IDLE_WAIT_SECONDS, Poster, Retrying, pause
from .webhook import Webhook, WebhookSettings, redacted, settings_from

log = logging.getLogger(__name__)

SERVICE = "backdata"
#: How often the oldest-event gauge is refreshed.
MONITOR_SECONDS = 1.0


@dataclass(frozen=True)
class Prepared:
    section: BackDataSection
    webhook: WebhookSettings


def prepare(config: Config) -> Prepared:
    section: BackDataSection = config.require("backdata")
    settings = settings_from(section, config)
    if not section.tls_verify and section.post_url.startswith("https:"):
        log.warning("tls-verify is false: the webhook's certificate is not checked")
    if section.bounce_manager is not None:
        log.info("backdata.bounce-manager is accepted for old files and not used")
    return Prepared(section, settings)


async def monitor(queue: ReliableQueue, consumer: Consumer, stop: asyncio.Event) -> None:
    """Age of the oldest event not yet delivered: the next one in the queue or the oldest in
    our hands, whichever is older (the queue is FIFO, so these two are the candidates)."""
    while not stop.is_set():
        try:
            pipe = queue.redis.pipeline(transaction=False)
            pipe.lindex(queue.name, -1)
            pipe.lindex(consumer.processing_key, -1)
            raws = await pipe.execute()
            OLDEST_AGE.set(batch.oldest_age(raws, time.time()))
        except (RedisError, OSError) as exc:
            log.debug("monitor could not read the queue", extra={"error": str(exc)})
        HELD.set(consumer.holding)
        await pause(stop, MONITOR_SECONDS)


def _posters(
    config: Config, section: BackDataSection, consumer: Consumer, hook: Webhook
) -> list[Poster]:
    """``concurrency`` posters sharing the consumer (one takes at a time), the order gate
    and the retry policy."""
    retrying = Retrying(
        section.retry_initial_seconds,
        section.retry_max_seconds,
        section.max_event_age_seconds,
    )
    take_lock, gate = asyncio.Lock(), OrderGate()
    return [
        Poster(
            f"p{n}",
            consumer,
            take_lock,
            gate,
            hook,
            section.batch_size,
            retrying,
            batch_wait=section.batch_wait_seconds,
            trace_settings=TraceSettings.of(config.global_.trace),
        )
        for n in range(section.concurrency)
    ]


async def serve(config: Config, prepared: Prepared, stop: asyncio.Event) -> None:
    section = prepared.section
    rq = config.global_.reliable_queue
    redis = redisconn.connect(section.reliable_queue.redis, blocking_timeout=IDLE_WAIT_SECONDS)
    queue = configured(redis, config.global_.backdata.queue_name, rq)
    consumer = queue.consumer(default_consumer_id(SERVICE))

    health = HealthServer(section.prometheus, {"redis": redisready.answers(redis)})
    await health.start()
    # The monitor outlives the posters and the release, to report what is left in our hands.
    monitor_stop = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        async with consuming([consumer], stop) as registered:
            if registered:
                watcher = asyncio.create_task(monitor(queue, consumer, monitor_stop))
                await _post(config, prepared, consumer, stop)
    finally:
        monitor_stop.set()
        if watcher is not None:
            await asyncio.gather(watcher, return_exceptions=True)
        await health.stop()
        await redis.aclose()


async def _post(
    config: Config, prepared: Prepared, consumer: Consumer, stop: asyncio.Event
) -> None:
    """Run the posters until ``stop`` (or one crashes), then let them finish the POST in
    flight; the batches not delivered are then released by ``consuming``."""
    loops: list[asyncio.Task[None]] = []
    try:
        async with Webhook(prepared.webhook) as hook:
            posters = _posters(config, prepared.section, consumer, hook)
            loops = [asyncio.create_task(p.run(stop)) for p in posters]
            log.info(
                "posting events",
                extra={
                    "queue": consumer.queue.name,
                    "webhook": redacted(prepared.webhook.url),
                    "concurrency": prepared.section.concurrency,
                    "consumer": consumer.id,
                },
            )
            await until_stop_or_crash(stop, loops, "a poster")
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve)
