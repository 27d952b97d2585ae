"""Group commit of front-door pushes against a real redis-server: concurrent messages share
round trips, and a batch is all or nothing."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from manycore_common import item as item_format
from manycore_common.grouppush import GroupPusher
from manycore_common.queue import QueueFull, ReliableQueue
from tests.helpers import LOOPBACK, free_port


def items(n: int) -> list[bytes]:
    return [item_format.new_item(b"m%d" % i, source="test", uuid=f"u{i}") for i in range(n)]


class CountingQueue(ReliableQueue):
    """A real queue that records the size of every round trip."""

    calls: list[int]

    async def push_many(self, raws: list[bytes]) -> int:  # type: ignore[override]
        self.calls.append(len(raws))
        return await super().push_many(raws)


async def test_concurrent_pushes_share_round_trips_and_all_land(redis: Redis) -> None:
    queue = CountingQueue(redis, "Q")
    queue.calls = []
    pusher = GroupPusher(queue)
    raws = items(200)
    await asyncio.gather(*(pusher.push(raw) for raw in raws))
    assert sorted(await redis.lrange("Q", 0, -1)) == sorted(raws)
    assert sum(queue.calls) == 200
    assert len(queue.calls) < 10  # not one round trip each


async def test_a_lone_push_is_sent_at_once(redis: Redis) -> None:
    queue = CountingQueue(redis, "Q")
    queue.calls = []
    pusher = GroupPusher(queue)
    for raw in items(3):
        await pusher.push(raw)
    assert queue.calls == [1, 1, 1]
    assert await redis.llen("Q") == 3


async def test_batches_respect_max_batch(redis: Redis) -> None:
    queue = CountingQueue(redis, "Q")
    queue.calls = []
    pusher = GroupPusher(queue, max_batch=7)
    await asyncio.gather(*(pusher.push(raw) for raw in items(50)))
    assert max(queue.calls) <= 7
    assert await redis.llen("Q") == 50
    with pytest.raises(ValueError, match="max_batch"):
        GroupPusher(queue, max_batch=ReliableQueue.PUSH_CHUNK + 1)


async def test_above_the_high_water_mark_the_whole_batch_is_refused(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", high_water_mark=5)
    await queue.push_many(items(5))
    pusher = GroupPusher(queue)
    results = await asyncio.gather(*(pusher.push(raw) for raw in items(20)), return_exceptions=True)
    assert all(isinstance(r, QueueFull) for r in results)
    assert await redis.llen("Q") == 5  # nothing of the refused batches landed


async def test_a_cancelled_waiter_is_not_queued(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    pusher = GroupPusher(queue)
    first = asyncio.ensure_future(pusher.push(b"first"))
    await asyncio.sleep(0)  # the flusher takes "first" and sends it
    gone = asyncio.ensure_future(pusher.push(b"gone"))
    kept = asyncio.ensure_future(pusher.push(b"kept"))
    await asyncio.sleep(0)
    gone.cancel()  # its client went away before its batch left
    await asyncio.gather(first, kept)
    assert sorted(await redis.lrange("Q", 0, -1)) == [b"first", b"kept"]


async def test_redis_errors_reach_every_waiter() -> None:
    # Nothing listens on this port: every push fails, and every waiter hears it.
    client = Redis(host=LOOPBACK, port=free_port(), socket_connect_timeout=1)
    pusher = GroupPusher(ReliableQueue(client, "Q"))
    results = await asyncio.gather(*(pusher.push(raw) for raw in items(10)), return_exceptions=True)
    assert all(isinstance(r, (RedisConnectionError, OSError)) for r in results), results
    await client.aclose()


async def test_stopping_fails_the_waiters_instead_of_leaving_them(redis: Redis) -> None:
    pusher = GroupPusher(ReliableQueue(redis, "Q"))
    waiters = [asyncio.ensure_future(pusher.push(raw)) for raw in items(5)]
    await asyncio.sleep(0)
    assert pusher._flusher is not None
    pusher._flusher.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, (ConnectionError, type(None))) for r in results)
    assert any(isinstance(r, ConnectionError) for r in results)
