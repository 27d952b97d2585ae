from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from xdist.scheduler import LoadFileScheduling

from tests.helpers import LOOPBACK, RedisServer

#: The e2e files that use the one shared stack (tests/e2e/conftest.py, the ``stack`` fixture).
SHARED_STACK_FILES = frozenset(
    f"tests/e2e/{name}.py" for name in ("test_stack", "test_suppression", "test_trace")
)


class SharedStackFileScheduling(LoadFileScheduling):  # type: ignore[misc]  # xdist is untyped
    """`--dist loadfile` (`make test`), except that the files sharing the e2e stack are one
    unit: one worker runs them, so the stack starts once. Grouping happens here, in the
    controller, from node ids: xdist 3.8's `--dist loadgroup` renames ``item._nodeid``,
    which pytest 9 no longer reads (ids live in ``item._id``), so its groups were silently
    ignored and every test was scheduled on its own."""

    def _split_scope(self, nodeid: str) -> str:
        return xdist_scope(nodeid)


def xdist_scope(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or the shared stack's group."""
    path = nodeid.split("::", 1)[0]
    return "e2e-shared-stack" if path in SHARED_STACK_FILES else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    return SharedStackFileScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A file using the shared stack must be in SHARED_STACK_FILES, or a second worker
    would start a second stack for it."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if "stack" in getattr(item, "fixturenames", ()) and path not in SHARED_STACK_FILES:
            raise pytest.UsageError(
                f"{path} uses the shared e2e stack: add it to SHARED_STACK_FILES"
            )


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
