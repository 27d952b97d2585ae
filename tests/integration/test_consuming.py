"""A service's consumers around its work (``manycore_common.consuming``), against a real
redis-server and a port where none listens."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from manycore_common import redisready
from manycore_common.consuming import consuming
from manycore_common.item import decode_stored, new_item
from manycore_common.queue import ReliableQueue
from tests.helpers import LOOPBACK, free_port

#: Short, so that the heartbeat (every third of it) is seen to refresh within a test.
TIMEOUT = 0.6


def items(n: int) -> list[bytes]:
    return [new_item(f"m{i}".encode(), source="test", uuid=f"u{i}") for i in range(n)]


async def heartbeat(redis: Redis, queue: ReliableQueue, consumer_id: str) -> float | None:
    return await redis.zscore(queue.consumers_key, consumer_id)


async def test_registered_while_running_heartbeat_kept_and_released_on_exit(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=TIMEOUT)
    await queue.push_many(items(3))
    consumer = queue.consumer("c1")
    caplog.set_level(logging.INFO, logger="manycore_common.consuming")
    async with consuming([consumer], asyncio.Event()) as registered:
        assert registered
        first = await heartbeat(redis, queue, "c1")
        assert first is not None  # registered before the block runs
        taken = [await consumer.take(0.1) for _ in range(2)]
        assert all(taken) and await queue.processing_size() == 2
        await asyncio.sleep(TIMEOUT * 0.8)
        later = await heartbeat(redis, queue, "c1")
        assert later is not None and later > first  # the heartbeat task refreshed it
        await queue.reap()  # our own reaper finds us alive: nothing moves
        assert await queue.processing_size() == 2
    assert await heartbeat(redis, queue, "c1") is None  # unregistered
    assert await queue.processing_size() == 0
    # Both back, at the front (taken next), and the third after them.
    raws = await redis.lrange("Q", 0, -1)
    assert [decode_stored(r).uuid for r in reversed(raws)] == ["u0", "u1", "u2"]
    returned = [r.__dict__["count"] for r in caplog.records if r.msg.startswith("held items")]
    assert returned == [2]
    # The heartbeat task ended before the release: nothing registers us again.
    await asyncio.sleep(TIMEOUT / 2)
    assert await heartbeat(redis, queue, "c1") is None


async def test_every_consumer_is_released_also_when_the_block_fails(redis: Redis) -> None:
    """Transformer's two consumers (P0 and P1, one id); an error in the block still releases."""
    p0 = ReliableQueue(redis, "P0", heartbeat_timeout=TIMEOUT)
    p1 = ReliableQueue(redis, "P1", heartbeat_timeout=TIMEOUT)
    await p0.push_many(items(1))
    await p1.push_many(items(1))
    consumers = (p0.consumer("t"), p1.consumer("t"))
    with pytest.raises(RuntimeError, match="boom"):
        async with consuming(consumers, asyncio.Event()) as registered:
            assert registered
            assert all([await c.take(0.1) for c in consumers])
            raise RuntimeError("boom")
    for queue in (p0, p1):
        assert await queue.size() == 1 and await queue.processing_size() == 0
        assert await heartbeat(redis, queue, "t") is None


async def test_a_stop_while_redis_is_down_ends_cleanly() -> None:
    """The one stop rule (``redisready``): not registered, the block learns it, and leaving
    neither heartbeats nor releases (nothing to reach, nothing held)."""
    down = Redis(
        host=LOOPBACK, port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    consumer = ReliableQueue(down, "Q").consumer("c1")
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(redisready.RETRY_SECONDS * 1.5, stop.set)
    seen: list[bool] = []
    try:
        async with asyncio.timeout(5):
            async with consuming([consumer], stop) as registered:
                seen.append(registered)
                stopped = time.monotonic()
        assert seen == [False]
        assert time.monotonic() - stopped < 0.1  # no release attempt against the dead port
    finally:
        await down.aclose()
