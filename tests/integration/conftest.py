from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common.tls import self_signed_pem
from tests.helpers import LOOPBACK, RedisServer
from tests.integration.postfix_env import Sink


@pytest.fixture
def queues(redis_server: RedisServer) -> Iterator[SyncRedis]:
    """A client of the session's redis-server, emptied before the test."""
    client = SyncRedis(host=LOOPBACK, port=redis_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """The sink MX a private Postfix relays to (the PostfixLog files)."""
    server = Sink().start()
    yield server
    server.stop()


@pytest.fixture
def flushed(redis_server: RedisServer) -> int:
    """The session's redis-server, emptied: its port."""
    client = SyncRedis(host=LOOPBACK, port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.port


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for "localhost" that clients in the tests trust explicitly."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_pem("localhost", ip_addresses=("127.0.0.1",))
    (directory / "receiver_cert.pem").write_bytes(cert)
    (directory / "receiver_key.pem").write_bytes(key)
    return directory / "receiver_cert.pem", directory / "receiver_key.pem"


@pytest.fixture(scope="session")
def client_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    return context


def build_message(
    uuid: str | None = "abc123",
    priority: str | None = None,
    *,
    sender: str = "Shop <news@example.com>",
    to: str = "Alice <alice@example.net>, bob@example.org",
    cc: str | None = "carol@example.org",
    stream_id: str | None = None,
    extra_headers: list[str] | None = None,
    body: str = "Hello\r\n\r\nThis is a test.\r\n",
) -> bytes:
    lines = [f"From: {sender}", f"To: {to}"]
    if cc:
        lines.append(f"Cc: {cc}")
    lines.append("Subject: Test message")
    if uuid is not None:
        lines.append(f"X-Uuid: {uuid}")
    if priority is not None:
        lines.append(f"X-Priority: {priority}")
    if stream_id is not None:
        lines.append(f"X-Stream-Id: {stream_id}")
    lines += extra_headers or []
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


MessageFactory = Callable[..., bytes]


@pytest.fixture
def message() -> Callable[..., bytes]:
    return build_message


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        if data.get(key) is None:
            data[key] = {}
        data = data[key]
    data[keys[-1]] = value
