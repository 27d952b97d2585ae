"""``Consumer.hand_over_split`` against a real redis-server: one held item becomes several items
on the target (the Transformer's one copy per recipient), all of them or none, in one step."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from manycore_common import item as item_format
from manycore_common.consumer import Consumer
from manycore_common.queue import ReliableQueue
from tests.helpers import stored_item


def raw(name: str) -> bytes:
    return item_format.new_item(name.encode(), source="test", uuid=name)


async def held(queue: ReliableQueue, n: int) -> tuple[Consumer, list[item_format.Item]]:
    await queue.push_many([raw(f"in{i}") for i in range(n)])
    consumer = queue.consumer("c1")
    await consumer.register()
    return consumer, await consumer.take_batch(n, timeout=1)


async def test_each_held_item_becomes_all_its_new_items(redis: Redis) -> None:
    source, target = ReliableQueue(redis, "P1"), ReliableQueue(redis, "OUT")
    consumer, items = await held(source, 2)
    splits = [(items[0], [raw("a1"), raw("a2"), raw("a3")]), (items[1], [raw("b1")])]
    assert await consumer.hand_over_split(splits, target) == (2, 4)
    pushed = [stored_item(r).payload for r in await redis.lrange("OUT", 0, -1)]
    assert sorted(pushed) == [b"a1", b"a2", b"a3", b"b1"]
    assert await source.processing_size() == 0 and await source.size() == 0
    assert consumer.holding == 0


async def test_an_item_no_longer_held_pushes_nothing(redis: Redis) -> None:
    source, target = ReliableQueue(redis, "P1"), ReliableQueue(redis, "OUT")
    consumer, items = await held(source, 2)
    # The reaper gave the first one back meanwhile (we looked dead).
    await redis.lrem(consumer.processing_key, 1, items[0].raw)  # type: ignore[arg-type]
    splits = [(items[0], [raw("a1"), raw("a2")]), (items[1], [raw("b1"), raw("b2")])]
    assert await consumer.hand_over_split(splits, target) == (1, 2)
    pushed = [stored_item(r).payload for r in await redis.lrange("OUT", 0, -1)]
    assert sorted(pushed) == [b"b1", b"b2"]


async def test_more_new_items_than_one_lpush_takes(redis: Redis) -> None:
    source, target = ReliableQueue(redis, "P1"), ReliableQueue(redis, "OUT")
    consumer, (item,) = await held(source, 1)
    outputs = [raw(f"r{i}") for i in range(1203)]
    assert await consumer.hand_over_split([(item, outputs)], target) == (1, 1203)
    assert await target.size() == 1203
    assert await source.processing_size() == 0


async def test_a_target_that_is_no_list_removes_nothing(redis: Redis) -> None:
    source = ReliableQueue(redis, "P1")
    consumer, (item,) = await held(source, 1)
    await redis.set("OUT", "not a list")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await consumer.hand_over_split([(item, [raw("a1")])], ReliableQueue(redis, "OUT"))
    # Still in our processing list: recover_strays returns it, nothing is lost.
    assert await redis.lrange(consumer.processing_key, 0, -1) == [item.raw]


async def test_nothing_to_do_and_an_item_without_new_items(redis: Redis) -> None:
    source, target = ReliableQueue(redis, "P1"), ReliableQueue(redis, "OUT")
    consumer, (item,) = await held(source, 1)
    assert await consumer.hand_over_split([], target) == (0, 0)
    with pytest.raises(ValueError, match="at least one new item"):
        await consumer.hand_over_split([(item, [])], target)
    assert await source.processing_size() == 1
