"""Queue gauges for Prometheus.

The README's four gauges keep their exact names (``primary_queue_messages``,
``default_queue_messages``, ``event_queue_messages``, ``queue_to_postfix_messages``); the rest
carry a ``queue`` label. A poller reads Redis every few seconds and the collector reports
the last reading. When Redis cannot be read, ``redis_up`` is 0 and no queue gauge is reported
at all: a missing series is honest, a zero would claim the queues are empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import item as item_format
from manycore_common.config import Config
from manycore_common.queue import ReliableQueue

log = logging.getLogger(__name__)


def readme_gauges(config: Config) -> dict[str, str]:
    """README gauge name → queue name."""
    g = config.global_
    return {
        "primary_queue_messages": g.reliable_queue.queue_names.primary_queue,
        "default_queue_messages": g.reliable_queue.queue_names.default_queue,
        "event_queue_messages": g.backdata.queue_name,
        "queue_to_postfix_messages": g.postfix.incoming_queue_name,
    }


@dataclass
class QueueReading:
    waiting: int
    processing: int
    dead: int
    oldest_age_seconds: float | None


@dataclass
class Snapshot:
    up: bool
    queues: dict[str, QueueReading] = field(default_factory=dict)
    used_memory_bytes: int | None = None
    #: Redis' maxmemory (0: no limit), beside used memory for the alert on their ratio.
    maxmemory_bytes: int | None = None
    taken_at: float = 0.0


def oldest_age(raw: bytes | None, now: float) -> float | None:
    """Age of the oldest waiting item from its header's ``enqueued_at`` (ms)."""
    if raw is None:
        return None
    try:
        enqueued = item_format.decode(raw).header.get("enqueued_at")
    except item_format.ItemFormatError:
        return None
    if not isinstance(enqueued, int):
        return None
    return max(0.0, now - enqueued / 1000)


async def read(redis: Redis, queues: Mapping[str, str]) -> Snapshot:
    readings = {}
    now = time.time()
    for name in queues.values():
        queue = ReliableQueue(redis, name)
        pipe = redis.pipeline(transaction=False)
        pipe.llen(queue.name)
        pipe.llen(queue.dead_key)
        pipe.lindex(queue.name, -1)  # the right end is the oldest (taken next)
        waiting, dead, oldest = await pipe.execute()
        readings[name] = QueueReading(
            waiting=int(waiting),
            processing=await queue.processing_size(),
            dead=int(dead),
            oldest_age_seconds=oldest_age(oldest, now),
        )
    memory = await redis.info("memory")
    return Snapshot(
        True,
        readings,
        int(memory.get("used_memory", 0)),
        int(memory.get("maxmemory", 0)),
        now,
    )


class QueueCollector(Collector):
    def __init__(self, gauges: Mapping[str, str]) -> None:
        self.gauges = dict(gauges)
        self.snapshot = Snapshot(up=False)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        yield GaugeMetricFamily("redis_up", "1 if the last reading of Redis succeeded", snap.up)
        if not snap.up:
            return
        for gauge, queue in self.gauges.items():
            reading = snap.queues.get(queue)
            if reading is not None:
                yield GaugeMetricFamily(gauge, f"Items waiting in {queue}", reading.waiting)
        families = {
            "processing": GaugeMetricFamily(
                "redis_queue_processing_messages",
                "Items held by consumers (taken, not yet acknowledged)",
                labels=["queue"],
            ),
            "dead": GaugeMetricFamily(
                "redis_queue_dead_messages", "Items in the dead-letter list", labels=["queue"]
            ),
            "age": GaugeMetricFamily(
                "redis_queue_oldest_age_seconds",
                "Age of the oldest waiting item (absent when the queue is empty)",
                labels=["queue"],
            ),
            "waiting": GaugeMetricFamily(
                "redis_queue_messages", "Items waiting, by queue", labels=["queue"]
            ),
        }
        for queue, reading in snap.queues.items():
            families["waiting"].add_metric([queue], reading.waiting)
            families["processing"].add_metric([queue], reading.processing)
            families["dead"].add_metric([queue], reading.dead)
            if reading.oldest_age_seconds is not None:
                families["age"].add_metric([queue], reading.oldest_age_seconds)
        yield from families.values()
        if snap.used_memory_bytes is not None:
            yield GaugeMetricFamily(
                "redis_used_memory_bytes", "Memory Redis uses", snap.used_memory_bytes
            )
        if snap.maxmemory_bytes is not None:
            # Above maxmemory Redis refuses writes (noeviction): the receivers answer 451/503.
            yield GaugeMetricFamily(
                "redis_maxmemory_bytes", "Redis' maxmemory (0: no limit)", snap.maxmemory_bytes
            )


async def poll(
    redis: Redis,
    collector: QueueCollector,
    interval: float,
    stop: asyncio.Event,
    reporting: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Read Redis every ``interval``. With ``reporting`` (a data node of a Sentinel set),
    the queue gauges come only while it says yes (this pod's node is the primary): the three
    pods read the same primary, and a dashboard's sum must count each queue once."""
    while not stop.is_set():
        try:
            if reporting is not None and not await reporting():
                collector.snapshot = Snapshot(up=True, taken_at=time.time())
            else:
                collector.snapshot = await read(redis, collector.gauges)
        except (RedisError, OSError) as exc:
            if collector.snapshot.up:
                log.warning("cannot read redis", extra={"error": str(exc)})
            collector.snapshot = Snapshot(up=False, taken_at=time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
