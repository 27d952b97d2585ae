"""``until_stop_or_crash``: a loop that dies of a bug stops the service; a stop ends the wait."""

from __future__ import annotations

import asyncio

import pytest

from manycore_common.loops import until_stop_or_crash


async def _forever(stop: asyncio.Event) -> None:
    await stop.wait()


async def _fails_after(seconds: float) -> None:
    await asyncio.sleep(seconds)
    raise RuntimeError("broken pool")


def test_a_failing_loop_sets_stop_and_raises() -> None:
    async def main() -> asyncio.Event:
        stop = asyncio.Event()
        healthy = asyncio.create_task(_forever(stop))
        failing = asyncio.create_task(_fails_after(0.01))
        with pytest.raises(RuntimeError, match="broken pool"):
            await until_stop_or_crash(stop, [healthy, failing], "a test loop")
        await healthy  # it saw the stop and ended
        return stop

    assert asyncio.run(main()).is_set()


def test_stop_ends_the_wait_without_error() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(_forever(stop))
        asyncio.get_running_loop().call_later(0.01, stop.set)
        await until_stop_or_crash(stop, [loop], "a test loop")
        await loop

    asyncio.run(main())


def test_a_loop_that_returns_is_not_a_crash() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        done_early = asyncio.create_task(asyncio.sleep(0))
        waiting = asyncio.create_task(_forever(stop))
        asyncio.get_running_loop().call_later(0.05, stop.set)
        await until_stop_or_crash(stop, [done_early, waiting], "a test loop")
        assert waiting.done()

    asyncio.run(main())


def test_every_loop_returning_ends_the_wait() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        await asyncio.wait_for(
            until_stop_or_crash(stop, [asyncio.create_task(asyncio.sleep(0))], "a test loop"), 5
        )
        assert not stop.is_set()

    asyncio.run(main())
