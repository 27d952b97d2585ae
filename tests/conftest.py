from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.helpers import LOOPBACK, RedisServer

#: The e2e files that share one stack (tests/e2e/conftest.py): one xdist worker runs them all.
SHARED_STACK_GROUP = "e2e-shared-stack"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks (its hook has no order)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n 2 --dist loadgroup` (`make test`), keep each file on one worker:
    module-scoped servers then start once, not once per worker. The files that use the
    shared e2e stack form one group, so the stack starts once. Without xdist the marks
    do nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        fixtures = getattr(item, "fixturenames", ())
        group = SHARED_STACK_GROUP if "stack" in fixtures else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


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
