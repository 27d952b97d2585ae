"""A consumer in its own process, for tests that SIGKILL consumers.

    python consumer_proc.py PORT SOURCE TARGET MODE [DELAY]

MODE ``hold``: take one item, print ``TOOK <id>`` and hang (to be killed while holding it).
MODE ``move``: hand items over from SOURCE to TARGET until SOURCE stays empty, ``DELAY``
seconds per item, printing ``MOVED <n>`` as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from redis.asyncio import Redis

from manycore_common.queue import ReliableQueue, default_consumer_id


async def main(port: int, source: str, target: str, mode: str, delay: float) -> None:
    redis = Redis(host="127.0.0.1", port=port)
    src = ReliableQueue(redis, source, heartbeat_timeout=1.0, max_attempts=3)
    dst = ReliableQueue(redis, target)
    consumer = src.consumer(default_consumer_id("test"))
    await consumer.register()
    stop = asyncio.Event()
    keeper = asyncio.create_task(consumer.keep_alive(stop))
    if mode == "hold":
        item = await consumer.take(timeout=10)
        assert item is not None
        print(f"TOOK {item.id}", flush=True)
        await asyncio.sleep(3600)
    moved = 0
    while True:
        item = await consumer.take(timeout=0.5)
        if item is None:
            break
        if delay:
            await asyncio.sleep(delay)
        if await consumer.hand_over(item, dst, item.raw):
            moved += 1
            print(f"MOVED {moved}", flush=True)
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    await consumer.release()
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]),
            sys.argv[2],
            sys.argv[3],
            sys.argv[4],
            float(sys.argv[5]) if len(sys.argv) > 5 else 0.0,
        )
    )
