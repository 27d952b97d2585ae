"""The poller behind the queue gauges (``metrics.QueueCollector``): it reads Redis every few
seconds and the collector reports the last reading."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import item as item_format
from manycore_common.queue import ReliableQueue

from .metrics import QueueCollector, QueueReading, Snapshot

log = logging.getLogger(__name__)


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
