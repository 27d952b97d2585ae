"""The reliable queue against a real redis-server (docs/ARCHITECTURE.md#queues)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from manycore_common import item as item_format
from manycore_common.queue import (
    QueueFull,
    ReliableQueue,
    default_consumer_id,
    wait_for_doorbells,
)
from tests.helpers import RedisServer, stored_item

CONSUMER_PROC = Path(__file__).with_name("consumer_proc.py")


def make_items(n: int, size: int = 64) -> list[bytes]:
    return [
        item_format.new_item(f"{i:08d}".encode() + b"x" * size, source="test", uuid=f"u{i}")
        for i in range(n)
    ]


def payload_ids(raws: list[bytes | str]) -> list[str]:
    return [stored_item(raw).payload[:8].decode() for raw in raws]


async def test_fifo_take_ack(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    await queue.push_many(make_items(3))
    consumer = queue.consumer("c1")
    await consumer.register()
    taken = [await consumer.take(timeout=1) for _ in range(3)]
    assert [t.payload[:8] for t in taken if t] == [b"00000000", b"00000001", b"00000002"]
    assert await queue.size() == 0
    assert await queue.processing_size() == 3
    for t in taken:
        assert t is not None
        assert await consumer.ack(t)
    assert await queue.processing_size() == 0
    assert await consumer.take(timeout=0.1) is None


async def test_item_payload_is_byte_exact(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    payload = bytes(range(256)) * 40 + b"\r\n.\r\n\n\n"
    await queue.push(item_format.new_item(payload, source="test", uuid="abc", priority=0))
    consumer = queue.consumer("c1")
    taken = await consumer.take(timeout=1)
    assert taken is not None
    assert taken.payload == payload
    assert taken.uuid == "abc"
    assert taken.header["priority"] == 0


async def test_high_water_mark_refuses_and_pushes_nothing(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", high_water_mark=2)
    await queue.push_many(make_items(2))
    with pytest.raises(QueueFull):
        await queue.push(make_items(1)[0])
    assert await queue.size() == 2


async def test_retry_then_dead_letter_with_reason(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", max_attempts=3)
    await queue.push(make_items(1)[0])
    consumer = queue.consumer("c1")
    outcomes = []
    for _ in range(3):
        taken = await consumer.take(timeout=1)
        assert taken is not None
        outcomes.append(await consumer.retry(taken, "transform failed: boom"))
    assert outcomes == ["requeued", "requeued", "dead"]
    assert await queue.size() == 0
    assert await queue.processing_size() == 0
    dead = await queue.dead_letters()
    assert len(dead) == 1
    assert dead[0].attempts == 3
    assert dead[0].dead_reason == "transform failed: boom"
    assert dead[0].header["dead"]["queue"] == "Q"
    assert dead[0].payload.startswith(b"00000000")

    # An operator requeues it: attempts start again, the payload is unchanged.
    assert await queue.requeue_dead() == 1
    assert await queue.dead_size() == 0
    again = await consumer.take(timeout=1)
    assert again is not None
    assert again.attempts == 0
    assert "dead" not in again.header
    assert again.payload == dead[0].payload


async def test_dead_letter_directly(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    await queue.push(make_items(1)[0])
    consumer = queue.consumer("c1")
    taken = await consumer.take(timeout=1)
    assert taken is not None
    assert await consumer.dead_letter(taken, "unknown From domain example.org")
    assert not await consumer.dead_letter(taken, "twice")  # no longer held: nothing happens
    dead = await queue.dead_letters()
    assert [d.dead_reason for d in dead] == ["unknown From domain example.org"]


async def test_corrupt_item_is_quarantined_not_lost(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", max_attempts=5)
    await redis.lpush("Q", b"not an item at all")
    consumer = queue.consumer("c1")
    taken = await consumer.take(timeout=1)
    assert taken is not None and taken.header.get("corrupt")
    assert await consumer.retry(taken, "cannot decode") == "dead"
    dead = await queue.dead_letters()
    assert dead[0].payload == b"not an item at all"
    assert "corrupt item" in (dead[0].dead_reason or "")
    assert await queue.requeue_dead() == 1
    assert await redis.lrange("Q", 0, -1) == [b"not an item at all"]


async def test_release_returns_items_to_front_without_counting(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    await queue.push_many(make_items(4))
    consumer = queue.consumer("c1")
    await consumer.register()
    held = await consumer.take_batch(2, timeout=1)
    assert len(held) == 2
    assert await consumer.release() == 2
    assert await redis.zcard(queue.consumers_key) == 0
    order = []
    other = queue.consumer("c2")
    while (t := await other.take(timeout=0.1)) is not None:
        order.append(t)
    assert [t.payload[:8] for t in order] == [b"00000000", b"00000001", b"00000002", b"00000003"]
    assert all(t.attempts == 0 for t in order)


async def test_presumed_dead_consumer_cannot_duplicate(redis: Redis) -> None:
    """A consumer whose heartbeat lapsed (a long pause) comes back and tries to hand over an
    item the reaper already returned: nothing is pushed, so the item exists once."""
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=0.2)
    target = ReliableQueue(redis, "T")
    await queue.push(make_items(1)[0])
    slow = queue.consumer("slow")
    await slow.register()
    held = await slow.take(timeout=1)
    assert held is not None
    await asyncio.sleep(0.4)
    result = await queue.reap()
    assert (result.returned, result.dead, result.consumers) == (1, 0, 1)
    assert not await slow.hand_over(held, target, held.raw)
    assert await target.size() == 0
    assert await queue.size() == 1
    fresh = queue.consumer("fresh")
    again = await fresh.take(timeout=1)
    assert again is not None and again.attempts == 1
    assert await fresh.hand_over(again, target, again.raw)
    assert await target.size() == 1 and await queue.size() == 0


async def test_reaper_leaves_live_consumers_alone(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=5)
    await queue.push(make_items(1)[0])
    consumer = queue.consumer("alive")
    await consumer.register()
    assert await consumer.take(timeout=1) is not None
    result = await queue.reap()
    assert result.consumers == 0
    assert await queue.processing_size() == 1


async def test_sigkilled_consumer_loses_nothing(redis: Redis, redis_server: RedisServer) -> None:
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=1.0, max_attempts=3)
    await queue.push_many(make_items(3))
    proc = subprocess.Popen(
        [sys.executable, str(CONSUMER_PROC), str(redis_server.port), "Q", "T", "hold"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith(b"TOOK ")
        assert await queue.size() == 2 and await queue.processing_size() == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Within the heartbeat timeout the item stays with its (dead) owner; after it, a reaper
    # (any consumer runs one) returns it to the front of the queue.
    returned = 0
    for _ in range(40):
        result = await queue.reap()
        returned += result.returned
        if returned:
            break
        await asyncio.sleep(0.1)
    assert returned == 1
    assert await queue.processing_size() == 0
    consumer = queue.consumer("c")
    taken = [await consumer.take(timeout=1) for _ in range(3)]
    assert [t.payload[:8] for t in taken if t] == [b"00000000", b"00000001", b"00000002"]
    assert taken[0] is not None and taken[0].attempts == 1


async def test_consumer_that_keeps_dying_dead_letters_the_item(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=0.1, max_attempts=2)
    await queue.push(make_items(1)[0])
    for n in range(2):
        victim = queue.consumer(f"victim{n}")
        await victim.register()
        assert await victim.take(timeout=1) is not None
        await asyncio.sleep(0.25)
        await queue.reap()
    dead = await queue.dead_letters()
    assert len(dead) == 1
    assert dead[0].attempts == 2
    assert "stopped heartbeating" in (dead[0].dead_reason or "")


async def test_concurrent_hand_over_neither_duplicates_nor_drops(redis: Redis) -> None:
    source = ReliableQueue(redis, "S", heartbeat_timeout=2)
    target = ReliableQueue(redis, "T")
    n = 2000
    await source.push_many(make_items(n))
    stop = asyncio.Event()

    async def worker(name: str, batch: int) -> int:
        client = Redis(
            host=redis.connection_pool.connection_kwargs["host"],
            port=redis.connection_pool.connection_kwargs["port"],
        )
        queue = ReliableQueue(client, "S", heartbeat_timeout=2)
        consumer = queue.consumer(name)
        await consumer.register()
        keeper = asyncio.create_task(consumer.keep_alive(stop))
        moved = 0
        while True:
            items = await consumer.take_batch(batch, timeout=0.2)
            if not items:
                break
            moved += await consumer.hand_over_many([(i, i.raw) for i in items], target)
        await consumer.release()
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        await client.aclose()
        return moved

    counts = await asyncio.gather(*(worker(f"w{i}", 1 + i * 7) for i in range(6)))
    stop.set()
    assert sum(counts) == n
    moved = await redis.lrange("T", 0, -1)
    ids = payload_ids(moved)
    assert len(ids) == n and len(set(ids)) == n
    assert await source.size() == 0 and await source.processing_size() == 0


async def test_hand_over_with_a_consumer_killed_midway(
    redis: Redis, redis_server: RedisServer
) -> None:
    """Three consumer processes move 600 items; one is SIGKILLed mid-run. After the reaper
    returns what it held, every item is in the target exactly once."""
    n = 600
    source = ReliableQueue(redis, "S", heartbeat_timeout=1.0, max_attempts=3)
    await source.push_many(make_items(n))
    procs = [
        subprocess.Popen(
            [sys.executable, str(CONSUMER_PROC), str(redis_server.port), "S", "T", "move", "0.002"],
            stdout=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        victim = procs[0]
        assert victim.stdout is not None
        for _ in range(20):  # let it get going, then kill it while it holds an item
            await asyncio.to_thread(victim.stdout.readline)
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        for proc in procs[1:]:
            await asyncio.to_thread(proc.wait, 60)
            assert proc.returncode == 0
        # Whatever the victim held is returned by a reaper and moved by a last consumer.
        await asyncio.sleep(1.2)
        await source.reap()
        last = subprocess.run(
            [sys.executable, str(CONSUMER_PROC), str(redis_server.port), "S", "T", "move"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert last.returncode == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    ids = payload_ids(await redis.lrange("T", 0, -1))
    assert len(ids) == n, f"{n - len(ids)} lost" if len(ids) < n else f"{len(ids) - n} duplicated"
    assert len(set(ids)) == n
    assert await source.size() == 0 and await source.processing_size() == 0
    assert await source.dead_size() == 0


def test_consumer_ids_are_unique() -> None:
    assert default_consumer_id("x") != default_consumer_id("x")


async def test_stray_item_from_a_lost_reply_is_returned(redis: Redis) -> None:
    """Redis moved an item into our processing list but the reply never reached us (a
    timeout): the consumer does not know it holds it, and returns it on its second look."""
    queue = ReliableQueue(redis, "Q")
    await queue.push_many(make_items(2))
    consumer = queue.consumer("c1")
    await consumer.register()
    known = await consumer.take(timeout=1)
    assert known is not None
    await redis.lmove("Q", consumer.processing_key, "RIGHT", "LEFT")  # the "lost reply"
    assert await consumer.recover_strays() == 0  # first sighting: could be in flight
    assert await consumer.recover_strays() == 1
    assert await queue.size() == 1
    assert await redis.llen(consumer.processing_key) == 1  # the known one stays held
    other = queue.consumer("c2")
    stray = await other.take(timeout=1)
    assert stray is not None and stray.payload.startswith(b"00000001")
    assert stray.attempts == 0
    assert await consumer.ack(known)


async def test_orphaned_processing_list_is_reaped(redis: Redis) -> None:
    """A consumer the reaper removed (it looked dead) took another item and then really died
    before it registered again: its list has no registration, but the take registered the
    list as a holder, and one heartbeat timeout later the reaper returns it."""
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=0.2)
    await queue.push_many(make_items(2))
    ghost = queue.consumer("ghost")
    await ghost.register()
    assert await ghost.take(timeout=1) is not None
    await asyncio.sleep(0.3)
    assert (await queue.reap()).returned == 1  # registration gone, first item returned
    assert await ghost.take(timeout=1) is not None  # keeps going without a heartbeat...
    # ...and may still be alive: within a timeout of being found unregistered it keeps it.
    assert (await queue.reap()).returned == 0
    assert await queue.processing_size() == 1
    await asyncio.sleep(0.3)  # ...but it died: the orphan list is returned, the holder forgotten
    result = await queue.reap()
    assert result.returned == 1
    assert await queue.size() == 2 and await queue.processing_size() == 0
    assert await redis.zcard(queue.holders_key) == 0


async def test_reaped_consumer_that_registers_again_keeps_its_items(redis: Redis) -> None:
    """Presumed dead (a pause), it takes again and then heartbeats within the timeout: what
    it took after coming back stays its own, nothing is returned behind its back."""
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=0.2)
    await queue.push_many(make_items(2))
    paused = queue.consumer("paused")
    await paused.register()
    assert await paused.take(timeout=1) is not None
    await asyncio.sleep(0.3)
    assert (await queue.reap()).returned == 1
    second = await paused.take(timeout=1)
    assert second is not None
    assert (await queue.reap()).returned == 0
    await paused.register()
    await asyncio.sleep(0.15)
    assert (await queue.reap()).returned == 0
    assert await paused.ack(second)


async def test_reap_and_stats_do_not_scan_the_keyspace(redis: Redis) -> None:
    """The reaper and processing_size read the registry: a processing list that is in no
    registry (an older version's) is invisible to them until adopt_unregistered finds it
    (the one SCAN), after which the reaper returns it one timeout later."""
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=0.2)
    await redis.lpush("Q:processing:old-version", *make_items(2))
    await redis.lpush("Q:processing:older", make_items(1)[0])
    await redis.lpush("Qx:processing:someone", make_items(1)[0])
    assert await queue.processing_size() == 0
    assert (await queue.reap()).returned == 0
    assert await queue.adopt_unregistered() == 2
    assert await queue.adopt_unregistered() == 0  # idempotent
    assert await queue.processing_size() == 3
    assert (await queue.reap()).returned == 0  # marked: it may belong to a live old consumer
    await asyncio.sleep(0.3)
    assert (await queue.reap()).returned == 3
    assert await queue.size() == 3 and await queue.processing_size() == 0
    assert await redis.llen("Qx:processing:someone") == 1  # another queue's: not ours
    # A queue name with glob characters matches only itself.
    assert await ReliableQueue(redis, "Q?").adopt_unregistered() == 0


async def test_registry_stays_bounded(redis: Redis) -> None:
    """Consumers that come and go (released or dead) leave no registry entry behind after
    a timeout: the registry's size follows the live consumers, not the history."""
    queue = ReliableQueue(redis, "Q", heartbeat_timeout=0.2)
    await queue.push_many(make_items(20))
    for n in range(10):
        consumer = queue.consumer(f"c{n}")
        await consumer.register()
        assert await consumer.take(timeout=1) is not None
        if n % 2:
            await consumer.release()
    assert await redis.zcard(queue.holders_key) == 10
    await asyncio.sleep(0.3)
    first = await queue.reap()
    assert (first.returned, first.consumers) == (5, 5)
    await asyncio.sleep(0.3)
    await queue.reap()
    assert await redis.zcard(queue.holders_key) == 0
    assert await redis.zcard(queue.consumers_key) == 0
    assert await queue.size() == 20 and await queue.processing_size() == 0


async def test_push_is_never_silently_repeated(redis: Redis, redis_server: RedisServer) -> None:
    """A push whose reply times out is not re-sent by the client library (that would queue
    the message twice): the caller sees the error and answers its client 451 / 503."""
    from manycore_common import redisconn
    from manycore_common.config import RedisConnection

    settings = RedisConnection.model_validate(
        {"hostname": "127.0.0.1", "port": redis_server.port, "command-timeout-seconds": 0.2}
    )
    client = redisconn.connect(settings)
    queue = ReliableQueue(client, "Q")
    await queue.size()  # connect first
    staller = Redis(host="127.0.0.1", port=redis_server.port)
    sleep = staller.execute_command("DEBUG", "SLEEP", "0.6")  # type: ignore[no-untyped-call]
    stall = asyncio.create_task(sleep)
    await asyncio.sleep(0.05)
    with pytest.raises(Exception):  # noqa: B017 - redis-py's TimeoutError
        await queue.push(make_items(1)[0])
    await stall
    await staller.aclose()
    await asyncio.sleep(0.1)
    assert await redis.llen("Q") == 1
    await client.aclose()


async def test_doorbell_wakes_a_consumer_of_several_queues(redis: Redis) -> None:
    p0 = ReliableQueue(redis, "P0", doorbell=True)
    p1 = ReliableQueue(redis, "P1", doorbell=True)
    # Nothing pushed: the wait runs out.
    assert not await wait_for_doorbells(redis, [p0, p1], timeout=0.1)
    # A push to either queue while waiting wakes the waiter (long before its 30 s).
    waiter = asyncio.ensure_future(wait_for_doorbells(redis, [p0, p1], timeout=30))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await p1.push(make_items(1)[0])
    assert await asyncio.wait_for(waiter, 10)
    # A push before the wait is not slept through, and many pushes leave one token.
    await p0.push_many(make_items(5))
    assert await redis.llen("{P0}:doorbell") == 1
    assert await wait_for_doorbells(redis, [p0, p1], timeout=30)
    assert not await wait_for_doorbells(redis, [p0, p1], timeout=0.1)


async def test_no_doorbell_without_a_push(redis: Redis) -> None:
    plain = ReliableQueue(redis, "Q")
    await plain.push(make_items(1)[0])
    assert not await redis.exists("{Q}:doorbell")  # only queues that ask for one
    full = ReliableQueue(redis, "F", high_water_mark=1, doorbell=True)
    await full.push(make_items(1)[0])
    await redis.delete("{F}:doorbell")
    with pytest.raises(QueueFull):
        await full.push(make_items(1)[0])
    assert not await redis.exists("{F}:doorbell")  # a refused push rings nothing


async def test_a_full_batch_rings_for_a_sibling(redis: Redis) -> None:
    p0 = ReliableQueue(redis, "P0", doorbell=True)
    p1 = ReliableQueue(redis, "P1", doorbell=True)
    await p0.push_many(make_items(10))  # one push of many: one token
    assert await wait_for_doorbells(redis, [p0, p1], timeout=1)
    assert not await wait_for_doorbells(redis, [p0, p1], timeout=0.1)
    await p0.ring_doorbell()
    await p0.ring_doorbell()
    assert await redis.llen("{P0}:doorbell") == 1  # never more than one token
    assert await wait_for_doorbells(redis, [p0, p1], timeout=1)


async def test_take_batch_stops_at_an_empty_queue(redis: Redis) -> None:
    queue = ReliableQueue(redis, "Q")
    consumer = queue.consumer("c1")
    await queue.push_many(make_items(3))
    taken = await consumer.take_batch(50, timeout=0)  # room for 50, three waiting
    assert payload_ids([t.raw for t in taken]) == ["00000000", "00000001", "00000002"]
    assert await queue.size() == 0 and await queue.processing_size() == 3
    assert await consumer.take_batch(50, timeout=0) == []
    assert await consumer.ack_many(taken) == 3


async def test_a_failure_after_the_first_take_keeps_the_item_in_hand(redis: Redis) -> None:
    """Found by the fault suite: Redis died between the blocking take of the first item and
    the take of the rest; the error dropped the first item from view while it sat in our
    processing list, unsettled until the consumer stopped."""
    queue = ReliableQueue(redis, "Q")
    await queue.push_many(make_items(2))

    async def redis_died(**_: object) -> list[bytes]:
        raise OSError("connection lost")

    consumer = queue.consumer("c1")
    queue._take_many = redis_died  # type: ignore[assignment]
    taken = await consumer.take_batch(10, timeout=1)
    assert payload_ids([t.raw for t in taken]) == ["00000000"]
    assert await consumer.ack_many(taken) == 1
    with pytest.raises(OSError):
        await consumer.take_batch(10, timeout=0)  # nothing in hand: the error is the caller's


async def test_a_push_no_replica_acknowledged_is_refused(
    redis: Redis, redis_server: RedisServer
) -> None:
    """With min-replicas-ack set, a push counts only once a replica has it: on a node without
    replicas, WAIT times out and the push raises (a RedisError: 451 / 503 to the client). The
    item may be in Redis anyway, so the client's retry can duplicate it (issue 19)."""
    from manycore_common import redisconn, replicas
    from manycore_common.config import RedisConnection

    settings = RedisConnection.model_validate(
        {
            "hostname": "127.0.0.1",
            "port": redis_server.port,
            "min-replicas-ack": 1,
            "replica-ack-timeout-ms": 100,
        }
    )
    client = redisconn.connect(settings)
    queue = ReliableQueue(client, "Q")
    await redis.script_flush()  # the first call must also load the script (NOSCRIPT path)
    with pytest.raises(replicas.NotReplicated):
        await queue.push(make_items(1)[0])
    with pytest.raises(replicas.NotReplicated):
        await queue.push_many(make_items(3))
    assert await redis.llen("Q") == 4
    await client.aclose()
