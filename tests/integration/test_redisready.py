"""The one Redis readiness check and start-up wait (``manycore_common.redisready``), against
a real redis-server and a port where none listens."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from manycore_common import redisready
from manycore_common.queue import ReliableQueue
from tests.helpers import (
    LOOPBACK,
    RedisServer,
    Service,
    free_port,
    wait_for,
    write_configs,
    write_dkim_keys,
)

#: As the services' clients (``redisconn``): no retries inside redis-py.
NO_RETRY = Retry(NoBackoff(), retries=0)


async def test_a_running_redis_answers_and_a_consumer_registers(redis: Redis) -> None:
    assert await redisready.answers(redis)()
    consumer = ReliableQueue(redis, "Q").consumer("c1")
    assert await redis.zscore(ReliableQueue(redis, "Q").consumers_key, "c1") is None
    assert await redisready.register_when_up(consumer, asyncio.Event())
    queue = ReliableQueue(redis, "Q")
    assert await redis.zscore(queue.consumers_key, "c1") is not None  # the reaper knows it


async def test_without_redis_the_wait_ends_at_a_stop() -> None:
    down = Redis(host=LOOPBACK, port=free_port(), socket_connect_timeout=0.5, retry=NO_RETRY)
    try:
        with pytest.raises(RedisConnectionError):
            await redisready.answers(down)()
        stop = asyncio.Event()
        consumer = ReliableQueue(down, "Q").consumer("c1")
        waiting = asyncio.create_task(redisready.register_when_up(consumer, stop))
        await asyncio.sleep(redisready.RETRY_SECONDS * 1.5)
        assert not waiting.done()  # still trying
        started = time.monotonic()
        stop.set()
        assert await asyncio.wait_for(waiting, 2) is False
        # Ends at the stop, not after the next attempt's pause.
        assert time.monotonic() - started < redisready.RETRY_SECONDS
    finally:
        await down.aclose()


async def test_redis_coming_up_late_is_waited_for(tmp_path: Path) -> None:
    port = free_port()
    late = Redis(host=LOOPBACK, port=port, socket_connect_timeout=0.5, retry=NO_RETRY)
    consumer = ReliableQueue(late, "Q").consumer("c1")
    waiting = asyncio.create_task(redisready.register_when_up(consumer, asyncio.Event()))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    server = await asyncio.to_thread(RedisServer(tmp_path, port).start)
    try:
        assert await asyncio.wait_for(waiting, redisready.RETRY_SECONDS * 5) is True
        assert await late.zscore(ReliableQueue(late, "Q").consumers_key, "c1") is not None
    finally:
        await late.aclose()
        server.stop()


@pytest.mark.parametrize("name", ["transformer", "backdata"])
def test_a_service_stopped_while_waiting_for_redis_exits_cleanly(tmp_path: Path, name: str) -> None:
    """The one stop rule, in the real processes: not ready (naming Redis) while it waits, and
    a SIGTERM then ends it at once with exit code 0."""
    global_file, customer_file = write_configs(tmp_path, free_port())
    write_dkim_keys(tmp_path)
    service = Service(name, global_file, customer_file, tmp_path / f"{name}.log")
    service.start(wait_ready=False)
    try:
        wait_for(lambda: "waiting for redis" in service.log.read_text(), what="the wait")
        assert service.readyz() == (503, {"status": "not ready", "failing": ["redis"]})
        started = time.monotonic()
        assert service.stop(timeout=10) == 0, service.log.read_text()
        assert time.monotonic() - started < 5
    finally:
        if service.process and service.process.poll() is None:
            service.process.kill()
