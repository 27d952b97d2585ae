"""MxServer's classifier pool with real worker processes and work that misbehaves as a
hostile message can make a parser misbehave: it hangs, it eats memory, it kills its process.
Each time the caller gets its answer within the limit, the event loop stays free, and the
pool goes on working with a replaced worker."""

from __future__ import annotations

import asyncio
import os
import time

from manycore_mxserver.authenticate import Analysis, Scope
from manycore_mxserver.classify import Classification, Settings
from manycore_mxserver.metrics import CLASSIFY_FAILED
from manycore_mxserver.pool import ClassifierPool, Job

SCOPE = Scope((b"k" * 32,), frozenset({"rp.example.com"}), 4096, 10)
TIMEOUT = 2.0


def misbehave(job: Job, settings: Settings, scope: Scope) -> Analysis:
    """What a worker does with a message in these tests: the body says how to misbehave."""
    if job.data == b"hang":
        time.sleep(3600)
    elif job.data == b"memory":
        hog = bytearray(512 * 1024 * 1024)  # past the 128 MiB limit: MemoryError
        del hog
    elif job.data == b"die":
        os._exit(3)
    return Analysis(Classification("unclassified", note=f"ok {job.data.decode()}"), ())


def job(data: bytes) -> Job:
    return Job("", ("postmaster@rp.example.com",), (), data)


async def _pool(size: int = 1) -> ClassifierPool:
    pool = ClassifierPool(size, TIMEOUT, Settings(), SCOPE, 128 * 1024 * 1024, misbehave)
    await pool.start()
    return pool


def note(result: Analysis | str) -> str:
    assert isinstance(result, Analysis), result
    return result.classification.note


def test_a_hanging_worker_is_killed_and_replaced_while_the_loop_runs() -> None:
    async def scenario() -> None:
        pool = await _pool()
        try:
            before = CLASSIFY_FAILED.labels("timeout")._value.get()
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            task = asyncio.create_task(ticker())
            started = time.monotonic()
            assert await pool.analyse(job(b"hang")) == "timeout"
            assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 2
            task.cancel()
            assert ticks >= TIMEOUT / 0.05 * 0.5, "the event loop was blocked"
            assert CLASSIFY_FAILED.labels("timeout")._value.get() == before + 1
            assert note(await pool.analyse(job(b"next"))) == "ok next"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_memory_past_the_limit_keeps_the_message_unclassified() -> None:
    async def scenario() -> None:
        pool = await _pool()
        try:
            assert "MemoryError" in note(await pool.analyse(job(b"memory")))
            assert note(await pool.analyse(job(b"after"))) == "ok after"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_dying_worker_is_replaced() -> None:
    async def scenario() -> None:
        pool = await _pool()
        try:
            assert await pool.analyse(job(b"die")) == "crash"
            assert note(await pool.analyse(job(b"again"))) == "ok again"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_other_messages_go_on_while_one_worker_hangs() -> None:
    async def scenario() -> None:
        pool = await _pool(size=2)
        try:
            hanging = asyncio.create_task(pool.analyse(job(b"hang")))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            for n in range(5):
                assert note(await pool.analyse(job(b"%d" % n))) == f"ok {n}"
            assert time.monotonic() - started < TIMEOUT
            assert await hanging == "timeout"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_caller_that_goes_away_does_not_lose_the_worker() -> None:
    async def scenario() -> None:
        pool = await _pool()
        try:
            call = asyncio.create_task(pool.analyse(job(b"hang")))
            await asyncio.sleep(0.2)
            call.cancel()  # the client hung up while its message was classified
            started = time.monotonic()
            assert note(await pool.analyse(job(b"later"))) == "ok later"
            assert time.monotonic() - started < TIMEOUT + 3
        finally:
            await pool.close()

    asyncio.run(scenario())
