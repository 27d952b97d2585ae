"""No ``CLIENT SETINFO`` (nor ``CLIENT MAINT_NOTIFICATIONS``) from the clients we build
(``redisconn.NO_CLIENT_SETINFO``): with one ACL user per service, Redis >= 7.2 refuses them
and logs every connect in ``ACL LOG``.

A real redis-server counts what a connect sent: on 7.2 and later ``CLIENT SETINFO`` shows in
``INFO commandstats``; on 7.0 (Debian 12), which knows neither, each one is an error reply
(``INFO stats`` ``total_error_replies``; an unknown subcommand never reaches MONITOR). A
default redis-py client moves one of them, which shows the measure works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from manycore_common import redisconn
from manycore_common.config import RedisConnection
from tests.helpers import LOOPBACK, RedisServer
from tests.integration.test_redis_module import NO_RETRY


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    server = RedisServer(tmp_path_factory.mktemp("setinfo")).start()
    try:
        yield server.port
    finally:
        server.stop()


def traces_of_setinfo(port: int) -> tuple[int, int]:
    """(CLIENT SETINFO calls, error replies) the server has counted so far."""
    admin = SyncRedis(host=LOOPBACK, port=port, retry=NO_RETRY, **redisconn.NO_CLIENT_SETINFO)
    try:
        calls = admin.info("commandstats").get("cmdstat_client|setinfo", {}).get("calls", 0)
        errors = admin.info("stats")["total_error_replies"]
    finally:
        admin.close()
    return int(calls), int(errors)


async def connect_and_ping(client: Redis) -> None:
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_default_redis_py_client_sends_it(port: int) -> None:
    """The measure below sees it: otherwise the test that follows proves nothing."""
    before = traces_of_setinfo(port)
    await connect_and_ping(Redis(host=LOOPBACK, port=port))
    assert traces_of_setinfo(port) != before


async def test_redisconn_clients_send_no_client_setinfo(port: int) -> None:
    before = traces_of_setinfo(port)
    client = redisconn.connect(RedisConnection(hostname=LOOPBACK, port=port))
    await connect_and_ping(client)
    assert traces_of_setinfo(port) == before


def test_every_form_passes_the_option() -> None:
    """The Sentinel form's clients (data nodes and sentinels) get the same option."""
    sentinel = RedisConnection.model_validate(
        {"sentinels": [{"hostname": LOOPBACK, "port": 1}], "master-name": "m"}
    )
    for kwargs in (redisconn._connection_kwargs(sentinel, 0), redisconn._sentinel_kwargs(sentinel)):
        assert kwargs["driver_info"] is None
        assert kwargs["maint_notifications_config"].enabled is False
    client = redisconn.connect(sentinel)
    assert client.connection_pool.connection_kwargs["driver_info"] is None
