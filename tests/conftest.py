from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.helpers import LOOPBACK, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(host=LOOPBACK, port=redis_server.port)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "configs"
