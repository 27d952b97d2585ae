"""Is Redis there: one readiness check and one start-up wait for every service.

* ``answers(redis)``: the ``redis`` check of ``/readyz`` (``health``): Redis answers PING.
* ``register_when_up(consumer, stop)``: a consumer registers (``queue.Consumer.register``)
  before it takes anything; while Redis is not reachable yet it tries again every
  ``RETRY_SECONDS`` (``/readyz`` says why meanwhile), and a stop ends the wait at once (an
  attempt in flight first ends, within the connect timeout: ``redisconn`` clients do not
  retry on their own). The one stop rule: a service told to stop before Redis came up gets
  False and shuts down cleanly, as after any other stop, instead of failing with the last
  Redis error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .health import ReadinessCheck

if TYPE_CHECKING:  # queue imports much; this module is imported by the front doors' workers
    from .consumer import Consumer

log = logging.getLogger(__name__)

#: Pause between two registration attempts while Redis is unreachable.
RETRY_SECONDS = 1.0


def answers(redis: Redis) -> ReadinessCheck:
    """The ``redis`` readiness check: True when Redis answers PING."""

    async def redis_ok() -> bool:
        return bool(await redis.ping())

    return redis_ok


async def register_when_up(consumer: Consumer, stop: asyncio.Event) -> bool:
    """Register ``consumer`` once Redis answers; False if told to stop first."""
    while not stop.is_set():
        try:
            await consumer.register()
            return True
        except (RedisError, OSError) as exc:
            log.warning("waiting for redis", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
    return False
