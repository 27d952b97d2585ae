"""Upgrade without loss (issue 17 item 5): a Redis that holds the previous release's key names
(``Q:dead``, ``Q:consumers``, ``Q:holders``, ``Q:processing:<id>``; and the unprefixed list
``Q`` once a key prefix is set) is drained by this release's reaper, against a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from manycore_common import keyspace
from manycore_common.queue import ReliableQueue
from tests.helpers import stored_item
from tests.integration.test_queue import make_items, payload_ids


async def server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_reaper_moves_what_the_previous_release_left(redis: Redis) -> None:
    items = make_items(8)
    # The previous release's layout: two dead letters, a live and a dead consumer, and a list
    # from before the registry existed.
    await redis.lpush("Q:dead", items[0], items[1])  # items[1] is the newest
    now = await server_ms(redis)
    await redis.zadd("Q:consumers", {"old-live": now + 60_000, "old-gone": now - 60_000})
    await redis.zadd("Q:holders", {"old-live": 0, "old-gone": 0})
    await redis.lpush("Q:processing:old-live", items[2])
    await redis.lpush("Q:processing:old-gone", items[3], items[4])
    await redis.lpush("Q:processing:unregistered", items[5])
    await redis.lpush("Q:doorbell", b"1")
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=0.2)
    assert queue.dead_key == "{Q}:dead"
    await queue.push(items[6])
    assert await queue.adopt_unregistered() == 1
    # Seen by the gauges and `manycore-queues` before the reaper moved them.
    assert await queue.processing_size() == 4

    first = await queue.reap()
    assert (first.returned, first.consumers) == (2, 1)  # old-gone's; the live one keeps its item
    assert not await redis.exists("Q:dead")
    assert payload_ids(await redis.lrange(queue.dead_key, 0, -1)) == ["00000001", "00000000"]
    waiting = [stored_item(r) for r in await redis.lrange("Q", 0, -1)]
    assert [i.payload[:8] for i in waiting] == [b"00000006", b"00000004", b"00000003"]
    assert [i.attempts for i in waiting] == [0, 1, 1]  # a reaped item counts an attempt
    assert await redis.llen("Q:processing:old-live") == 1

    await asyncio.sleep(0.3)  # the unregistered list was marked; now its timeout has passed
    await redis.zadd("Q:consumers", {"old-live": now - 60_000})  # its process stopped
    await queue.reap()
    await asyncio.sleep(0.3)
    await queue.reap()
    assert sorted(payload_ids(await redis.lrange("Q", 0, -1))) == [
        f"0000000{i}" for i in (2, 3, 4, 5, 6)
    ]
    assert await redis.keys("Q:*") == []  # nothing of the previous release is left
    assert await queue.processing_size() == 0


async def test_setting_a_prefix_moves_the_unprefixed_queue(redis: Redis) -> None:
    """A deployment that sets ``key-prefix`` on a Redis that holds mail: the reaper moves the
    waiting items and dead letters under the new names, oldest still served first."""
    items = make_items(5)
    await redis.lpush("Q", *items[:3])  # items[0] is the oldest: served first
    await redis.lpush("Q:dead", items[3])
    queue = ReliableQueue(redis, "Q", keys=keyspace.Keyspace("{mc}"))
    assert (queue.name, queue.dead_key) == ("{mc}Q", "{mc}Q:dead")
    await queue.push(items[4])  # pushed by this release meanwhile
    await queue.reap()
    assert not await redis.exists("Q", "Q:dead")
    assert await queue.dead_size() == 1
    consumer = queue.consumer("c1")
    await consumer.register()
    taken = [await consumer.take(timeout=0.1) for _ in range(4)]
    assert payload_ids([i.raw for i in taken if i]) == [
        "00000000",
        "00000001",
        "00000002",
        "00000004",
    ]


async def test_many_legacy_dead_letters_move_in_chunks(redis: Redis) -> None:
    raws = make_items(2500, size=8)
    for start in range(0, len(raws), 500):
        await redis.lpush("Q:dead", *raws[start : start + 500])
    queue = ReliableQueue(redis, "Q")
    await queue.reap()
    assert not await redis.exists("Q:dead")
    oldest_first = [i.raw for i in await queue.dead_letters(0, 3000)]
    assert oldest_first == raws
