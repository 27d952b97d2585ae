"""heaptrim: a trim once after each burst, never while work goes on."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from manycore_common import heaptrim


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()  # trim_when_idle freezes what exists; give the test process its GC back


@pytest.mark.parametrize(
    ("previous", "now", "trimmed", "expected"),
    [
        (5, 5, None, True),  # quiet since start-up: start-up's garbage goes
        (5, 5, 5, False),  # nothing new since the last trim
        (4, 5, None, False),  # still working
        (5, 5, 3, True),  # a burst ended
        (5, 7, 3, False),
    ],
)
def test_should_trim(previous: int, now: int, trimmed: int | None, expected: bool) -> None:
    assert heaptrim.should_trim(previous, now, trimmed) is expected


def test_glibc_malloc_trim_is_found() -> None:
    trim = heaptrim.malloc_trim()
    assert trim is not None  # the images and this machine run glibc (Debian)
    assert trim() in (0, 1)


async def test_one_trim_per_burst_and_none_during_work() -> None:
    # One activity reading per quiet period: start, quiet, a burst, quiet, quiet, work, quiet.
    readings = iter([0, 0, 1, 2, 3, 3, 3, 3, 4, 4])
    seen: list[int] = []
    trims: list[int] = []
    stop = asyncio.Event()

    def activity() -> int:
        value = next(readings, None)
        if value is None:
            stop.set()
            return seen[-1]
        seen.append(value)
        return value

    def trim() -> int:
        trims.append(seen[-1])
        return 1

    await asyncio.wait_for(heaptrim.trim_when_idle(activity, stop, quiet=0, trim=trim), 10)
    # After start-up's quiet period, after the burst (once, though quiet lasted three
    # periods), after the last bit of work; never between readings that differ.
    assert trims == [0, 3, 4]
