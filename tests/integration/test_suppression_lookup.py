"""The Transformer's suppression check against a real Redis, through the look-up's held
connections (``manycore_common.suppressionlookup``): an entry counts from the next batch on,
a flushed script is loaded again, and a call cut short (cancelled, a killed connection)
never leaves its reply for the next batch to read as its own, which would let a suppressed
recipient be signed and sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from manycore_common import suppression as s
from manycore_common.config import SuppressionSettings
from manycore_common.suppressionstore import SuppressionStore
from manycore_transformer.suppress import Checker, Verdict
from tests.helpers import LOOPBACK, RedisServer
from tests.integration.conftest import build_message

Job = tuple[bytes, tuple[str, ...] | None]


def job(uuid: str, *rcpts: str) -> Job:
    return build_message(uuid), rcpts


def kept(verdicts: list[Verdict]) -> list[tuple[str, ...] | None]:
    return [v.keep for v in verdicts]


async def suppress(redis: Redis, address: str, scope: str = "example.com") -> None:
    entry = s.new_entry("hard-bounce", time.time(), 30, "ab" * 8, "u-1")
    await redis.hset(s.bucket_key(scope, address), address, s.pack(entry))


async def test_an_entry_counts_from_the_next_batch_and_a_flushed_script_is_loaded(
    redis: Redis,
) -> None:
    checker = Checker(SuppressionStore(redis), SuppressionSettings())
    batch = [job("m1", "bob@example.org", "ann@example.org"), job("m2", "bob@example.org")]
    assert kept(await checker.check(batch)) == [None, None]
    await suppress(redis, "bob@example.org")  # as MxServer or the API would, in between
    assert kept(await checker.check(batch)) == [("ann@example.org",), ()]
    await redis.script_flush()  # a restarted Redis has no scripts
    await suppress(redis, "ann@example.org")
    assert kept(await checker.check(batch)) == [(), ()]
    assert kept(await checker.check([job("m3", "cid@example.org")])) == [None]


async def test_a_call_cut_short_leaves_no_reply_behind(redis: Redis) -> None:
    await suppress(redis, "bob@example.org")
    checker = Checker(SuppressionStore(redis), SuppressionSettings())
    suppressed = [job("m1", "bob@example.org")]
    clean = [job("m2", "ann@example.org")]
    assert kept(await checker.check(clean)) == [None]  # a held connection exists now
    for _ in range(20):
        # Cancelled once its command is sent and before its reply is read: the reply
        # (bob's entry) must not be taken as the answer for the next batch.
        task = asyncio.create_task(checker.check(suppressed))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert kept(await checker.check(clean)) == [None]
        assert kept(await checker.check(suppressed)) == [()]


async def test_concurrent_batches_get_their_own_answers_and_a_killed_connection_heals(
    redis: Redis,
) -> None:
    await suppress(redis, "bob@example.org")
    checker = Checker(SuppressionStore(redis), SuppressionSettings())
    suppressed = [job("m1", "bob@example.org", "ann@example.org")]
    clean = [job("m2", "cid@example.org")] * 3
    for _ in range(10):
        results = await asyncio.gather(*(checker.check(b) for b in [suppressed, clean] * 3))
        assert [kept(r) for r in results] == [[("ann@example.org",)], [None] * 3] * 3
    await redis.client_kill_filter(_type="normal", skipme=True)
    # Every held connection is closed now (as after a Redis restart): the read-only call is
    # sent again on a new one, so the first batch after the kill gets its answer.
    assert kept(await checker.check(suppressed)) == [("ann@example.org",)]
    assert kept(await checker.check(suppressed)) == [("ann@example.org",)]


def evalsha_calls(client: SyncRedis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_sent_look_up_is_run_while_the_caller_works_and_can_be_given_up(
    redis: Redis, redis_server: RedisServer
) -> None:
    """``send`` returns with the command written: Redis runs it while the event loop is
    blocked (as it is while the Transformer signs). A look-up given up unread never lends
    its reply to the next one."""
    await suppress(redis, "bob@example.org")
    checker = Checker(SuppressionStore(redis), SuppressionSettings())
    suppressed = [job("m1", "bob@example.org", "ann@example.org")]
    assert kept(await checker.check(suppressed)) == [("ann@example.org",)]  # script loaded
    watcher = SyncRedis(host=LOOPBACK, port=redis_server.port)
    try:
        for _ in range(5):
            before = evalsha_calls(watcher)
            pending = await checker.send(suppressed)
            deadline = time.monotonic() + 10
            while evalsha_calls(watcher) == before and time.monotonic() < deadline:
                time.sleep(0.01)  # blocking: the event loop does not run
            assert evalsha_calls(watcher) == before + 1, "not written when send returned"
            assert kept(await pending.verdicts()) == [("ann@example.org",)]
            given_up = await checker.send(suppressed)
            await given_up.abandon()
            assert kept(await checker.check([job("m2", "cid@example.org")])) == [None]
    finally:
        watcher.close()
