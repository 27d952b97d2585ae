"""The claiming push script (``ReliableQueue.push_claimed``) and group commit with claims,
against a real redis-server: a claim and its push happen together or not at all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from manycore_common import item as item_format
from manycore_common.grouppush import GroupPusher
from manycore_common.idempotency import Claim, claim_for
from manycore_common.queue import QueueFull, ReliableQueue
from tests.helpers import LOOPBACK, RedisServer, stored_item

WINDOW = 3600


def claim(uuid: str, priority: int = 1, window: int = WINDOW) -> Claim:
    made = claim_for(uuid, priority, window)
    assert made is not None
    return made


def item(uuid: str) -> bytes:
    return item_format.new_item(b"m-" + uuid.encode(), source="test", uuid=uuid)


async def uuids(redis: Redis, queue: str = "Q") -> list[str]:
    return sorted(stored_item(raw).uuid or "" for raw in await redis.lrange(queue, 0, -1))


async def test_claims_are_made_with_the_push_and_duplicates_are_not_pushed(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", doorbell=True)
    first = await queue.push_claimed([(item("a"), claim("a", 0)), (item("b"), None)])
    assert (first.length, first.earlier, first.full) == (2, (None, None), False)
    assert await redis.get(claim("a").key) == b"0"
    assert 0 < await redis.ttl(claim("a").key) <= WINDOW
    await redis.delete(queue.doorbell_key)
    again = await queue.push_claimed([(item("a"), claim("a", 1)), (item("c"), claim("c"))])
    assert again.earlier == (b"0", None)  # the first submission's priority comes back
    assert await uuids(redis) == ["a", "b", "c"]
    assert await redis.llen(queue.doorbell_key) == 1
    # Only duplicates: nothing pushed, nobody woken, the length reported all the same.
    await redis.delete(queue.doorbell_key)
    only = await queue.push_claimed([(item("a"), claim("a")), (item("c"), claim("c"))])
    assert (only.length, only.earlier) == (3, (b"0", b"1"))
    assert await redis.llen(queue.doorbell_key) == 0


async def test_one_claim_twice_in_one_call_pushes_the_first(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    result = await queue.push_claimed([(item("x"), claim("x", 0)), (item("x"), claim("x", 1))])
    assert result.earlier == (None, b"0")
    assert await uuids(redis) == ["x"]


async def test_a_full_queue_claims_nothing_yet_still_knows_duplicates(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", high_water_mark=1)
    await queue.push_claimed([(item("old"), claim("old"))])
    result = await queue.push_claimed([(item("new"), claim("new")), (item("old"), claim("old"))])
    assert result.full and result.earlier == (None, b"1")
    assert await redis.exists(claim("new").key) == 0  # refused: no claim left behind
    await redis.delete("Q")
    assert (await queue.push_claimed([(item("new"), claim("new"))])).earlier == (None,)
    assert await uuids(redis) == ["new"]


async def test_a_queue_of_the_wrong_type_fails_before_any_claim(redis: Redis) -> None:
    await redis.set("Q", "not a list")
    queue = ReliableQueue(redis, "Q")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await queue.push_claimed([(item("a"), claim("a")), (item("b"), claim("b"))])
    assert await redis.exists(claim("a").key, claim("b").key) == 0


async def test_redis_out_of_memory_leaves_no_claim(tmp_path: Path) -> None:
    # maxmemory 1 byte with noeviction: Redis refuses the first write of the script.
    server = RedisServer(tmp_path / "redis", None, "--maxmemory", "1").start()
    client = Redis(host=LOOPBACK, port=server.port)
    try:
        queue = ReliableQueue(client, "Q")
        with pytest.raises(RedisError, match="maxmemory"):
            await queue.push_claimed([(item("a"), claim("a"))])
        assert await client.dbsize() == 0
    finally:
        await client.aclose()
        server.stop()


async def test_a_claim_expires_with_its_window(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    short = claim("w", window=1)
    assert (await queue.push_claimed([(item("w"), short)])).earlier == (None,)
    assert (await queue.push_claimed([(item("w"), short)])).earlier == (b"1",)
    await asyncio.sleep(1.2)
    assert (await queue.push_claimed([(item("w"), short)])).earlier == (None,)
    assert await uuids(redis) == ["w", "w"]


async def test_a_remembered_uuid_costs_under_100_bytes(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    made = claim("9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c")
    await queue.push_claimed([(item("u"), made)])
    assert int(await redis.memory_usage(made.key) or 0) <= 100


async def test_concurrent_duplicates_through_group_commit_queue_one_each(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    pusher = GroupPusher(queue)
    names = [f"u{i % 10}" for i in range(50)]
    results = await asyncio.gather(*(pusher.push(item(n), claim(n)) for n in names))
    assert sum(r is None for r in results) == 10
    assert sum(r == b"1" for r in results) == 40
    assert await uuids(redis) == sorted(f"u{i}" for i in range(10))


async def test_group_commit_when_full_answers_duplicates_and_refuses_the_rest(
    redis: Redis,
) -> None:
    queue = ReliableQueue(redis, "Q", high_water_mark=1)
    pusher = GroupPusher(queue)
    assert await pusher.push(item("first"), claim("first")) is None
    results = await asyncio.gather(
        pusher.push(item("first"), claim("first")),
        pusher.push(item("second"), claim("second")),
        pusher.push(item("plain"), None),
        return_exceptions=True,
    )
    assert results[0] == b"1"
    assert isinstance(results[1], QueueFull) and isinstance(results[2], QueueFull)
    assert await uuids(redis) == ["first"]
    assert await redis.exists(claim("second").key) == 0
