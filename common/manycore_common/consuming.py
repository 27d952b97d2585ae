"""A consuming service's one start and stop around its consumers (``consumer.Consumer``).

``consuming(consumers, stop)`` is an async context manager; the order is the same for every
service (Transformer, BackData, PostfixLog)::

    async with consuming([consumer], stop) as registered:
        if not registered:
            return  # told to stop before Redis came up
        ...  # the service's own loops; settle or stop everything that takes before leaving

1. Each consumer registers once Redis answers (``redisready.register_when_up``, its one stop
   rule): a stop first yields False, and leaving then does nothing more (a consumer that
   registered before the stop is still released, as in step 4).
2. One heartbeat task per registered consumer (``Consumer.keep_alive``): it keeps the
   processing list ours for the whole block, including the last settlements after a stop.
3. The block runs; it must end its own takers before it leaves.
4. On leaving, whatever the reason (stop, return, exception): the heartbeats stop first, then
   each consumer is released (``Consumer.release``: what it still holds goes back to the front
   of its queue, logged with the count, and it unregisters). Heartbeats stop before the
   release so that none re-registers a consumer that has just said goodbye. A Redis failure
   during the release is logged, not raised: the reaper returns those items one heartbeat
   timeout later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from . import redisready

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def consuming(consumers: Sequence[Consumer], stop: asyncio.Event) -> AsyncIterator[bool]:
    """Register ``consumers`` when Redis is up, keep their heartbeats for the block, then stop
    the heartbeats and release them (module docstring: the order). Yields False when ``stop``
    came before every consumer had registered."""
    registered: list[Consumer] = []
    heartbeat_stop = asyncio.Event()
    heartbeats: list[asyncio.Task[None]] = []
    try:
        for consumer in consumers:
            if not await redisready.register_when_up(consumer, stop):
                break
            registered.append(consumer)
            heartbeats.append(asyncio.create_task(consumer.keep_alive(heartbeat_stop)))
        yield len(registered) == len(consumers)
    finally:
        heartbeat_stop.set()
        await asyncio.gather(*heartbeats, return_exceptions=True)
        for consumer in registered:
            await release(consumer)


async def release(consumer: Consumer) -> int:
    """Give back what ``consumer`` holds and unregister it; the count handed back (0 also
    when Redis failed, which is logged: the reaper then returns the items)."""
    try:
        returned = await consumer.release()
    except (RedisError, OSError) as exc:
        log.warning(
            "could not release the consumer; the reaper will return its items",
            extra={"queue": consumer.queue.name, "consumer": consumer.id, "error": str(exc)},
        )
        return 0
    if returned:
        log.info(
            "held items returned to the queue",
            extra={"queue": consumer.queue.name, "consumer": consumer.id, "count": returned},
        )
    return returned
