"""Shared pieces of the hostile-input suite: a trusted TLS certificate, raw SMTP helpers and
the invariants every hostile session must leave intact."""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common.tls import self_signed_pem
from tests.helpers import LOOPBACK, RedisServer, Service, running, write_configs
from tests.integration.conftest import set_path

#: Every socket operation in this suite is bounded: a hang is a failure, never a stuck run.
IO_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def hostile_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("hostile-tls")
    cert, key = self_signed_pem("localhost", ip_addresses=("127.0.0.1",))
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    return directory / "cert.pem", directory / "key.pem"


@pytest.fixture(scope="session")
def hostile_client_tls(hostile_tls: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(hostile_tls[0]))


def smtp_client(port: int) -> smtplib.SMTP:
    # local_hostname avoids smtplib's getfqdn() (a DNS lookup).
    return smtplib.SMTP(LOOPBACK, port, local_hostname="localhost", timeout=IO_TIMEOUT)


_REPLY = re.compile(r"[2-5][0-9][0-9]")


def assert_clear_reply(code: int, text: bytes) -> None:
    """A reply a client can act on: a real code and, for a refusal, words saying why."""
    assert _REPLY.fullmatch(str(code)), (code, text)
    if code >= 400:
        assert text.strip(), f"{code} without any text"


def assert_alive(service: Service) -> None:
    assert service.process is not None and service.process.poll() is None, "service died"
    assert service.live(), "/livez is not 200"


@contextmanager
def configured_service(
    name: str,
    directory: Path,
    redis_port: int,
    settings: dict[str, Any],
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Service]:
    """The real service ``name`` on the example config with Redis on ``redis_port`` and each
    ``settings`` entry (a dotted key path of the customer file → value) set; ``tls`` is the
    receiver's certificate and key."""

    def change(customer: dict[str, Any]) -> None:
        for path, value in settings.items():
            set_path(customer, path, value)

    global_file, customer_file = write_configs(directory, redis_port, change)
    if tls is not None:
        shutil.copy(tls[0], directory / f"{name}_cert.pem")
        shutil.copy(tls[1], directory / f"{name}_key.pem")
    with running(Service(name, global_file, customer_file, directory / f"{name}.log")) as service:
        yield service


@pytest.fixture(scope="module")
def redis_client(redis_server: RedisServer) -> Iterator[SyncRedis]:
    client = SyncRedis(host=LOOPBACK, port=redis_server.port)
    yield client
    client.close()


#: Every hostile MxServer: a rate limit no test reaches (every client is 127.0.0.1), so each
#: test meets only the limit it is about.
MX_BASE: dict[str, Any] = {
    "mxserver.hostname": "mx.test",
    "mxserver.rate-limit": {"messages": 100000, "window-seconds": 60},
}


@pytest.fixture(scope="module")
def mx(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> Iterator[Service]:
    """The real MxServer for one module, with ``MX_BASE`` and the module's ``MX_SETTINGS``
    (dotted key paths of the customer file, as ``configured_service`` takes them)."""
    settings = {**MX_BASE, **getattr(request.module, "MX_SETTINGS", {})}
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    directory = tmp_path_factory.mktemp(f"{name}-mx")
    with configured_service("mxserver", directory, redis_server.port, settings) as service:
        yield service
