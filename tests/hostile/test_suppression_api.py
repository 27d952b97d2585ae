"""The suppression API of the real HttpReceiver under hostile bodies: slow and oversized
imports, JSON nested past the parser, values of the wrong JSON type, strings with no UTF-8
form. Each gets its documented JSON error (never a 500) and the service keeps serving."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis as SyncRedis

from tests.helpers import LOOPBACK, RedisServer, Service
from tests.hostile.conftest import IO_TIMEOUT, configured_service
from tests.hostile.test_httpreceiver import GOOD_AUTH, assert_serves, request

TIMEOUT = 2.0
PATH = "/v1/suppressions"
JSON = {"Authorization": GOOD_AUTH, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Service]:
    settings = {
        "httpreceiver.auth-throttle": {"max-failures": 100000, "delay-seconds": 0},
        "httpreceiver.request-timeout-seconds": TIMEOUT,
    }
    directory = tmp_path_factory.mktemp("hostile-suppressions")
    with configured_service("httpreceiver", directory, redis_server.port, settings) as service:
        yield service


def answer(
    service: Service, body: bytes | list[bytes], method: str = "POST", path: str = PATH
) -> tuple[int, dict[str, Any]]:
    status, data, ctype = request(service, body, JSON, method, path)
    assert ctype.startswith("application/json"), (status, data[:200])
    return status, json.loads(data)


def errors(service: Service, reason: str) -> float:
    return service.metric("httpreceiver_suppression_api_errors_total", f'reason="{reason}"')


def head(length: str) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {GOOD_AUTH}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_body_that_dribbles_gets_408_and_the_connection_closed(
    api: Service, redis_client: SyncRedis
) -> None:
    before = errors(api, "request-timeout")
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, int(api.port or 0)), IO_TIMEOUT) as sock:
        sock.sendall(head("100000") + b'{"domain": "example.com", "entries": [')
        deadline = started + TIMEOUT + 3
        while time.monotonic() < deadline:
            try:
                sock.sendall(b'"a@b.org",')
            except OSError:
                break  # closed by the server, as it should be
            time.sleep(0.1)
        sock.settimeout(IO_TIMEOUT)
        data = read_answer(sock)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["reason"] == "request-timeout" and "seconds" in body["error"]
    assert time.monotonic() - started < TIMEOUT + 3
    assert errors(api, "request-timeout") == before + 1
    assert_serves(api, redis_client)


def test_oversized_imports_get_413_declared_or_chunked(
    api: Service, redis_client: SyncRedis
) -> None:
    before = errors(api, "too-large")
    # Declared: answered from the header, without waiting for (or reading) the body.
    with socket.create_connection((LOOPBACK, int(api.port or 0)), IO_TIMEOUT) as sock:
        sock.sendall(head(str(64 * 1024 * 1024)))
        data = read_answer(sock)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["reason"] == "too-large"
    # Chunked: refused as soon as it passes the cap.
    chunks = [b'{"entries": ['] + [b'"' + b"a" * 8000 + b'@b.org",'] * 600
    status, body = answer(api, chunks)
    assert (status, body["reason"]) == (413, "too-large") and "bytes" in body["error"]
    assert errors(api, "too-large") == before + 2
    assert_serves(api, redis_client)


ODD = [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"entries": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (b'{"domain": "example.com", "entries": [' + b"1" * 5000 + b"]}", "must be JSON"),
    (b'{"entries": ["a@b.org"], "domain": "\xff\xfe"}', "UTF-8"),
    (b"{not json", "must be JSON"),
    (
        json.dumps({"domain": {"name": "example.com"}, "entries": ["a@b.org"]}).encode(),
        "domain must be a string, not an object",
    ),
    (
        json.dumps(
            {"domain": "example.com", "reason": ["manual"], "entries": ["a@b.org"]}
        ).encode(),
        "reason must be a string, not an array",
    ),
    (
        json.dumps({"domain": "example.com", "entries": [{"address": {"a": 1}}]}).encode(),
        "entries[0].address must be a string, not an object",
    ),
    (
        json.dumps({"domain": "example.com", "entries": [{"address": None}]}).encode(),
        "entries[0]: address is required",
    ),
    (
        json.dumps(
            {"domain": "example.com", "entries": ["a@b.org", {"address": "c@d.org", "domain": 7}]}
        ).encode(),
        "entries[1].domain must be a string, not number",
    ),
    (
        json.dumps(
            {"domain": "example.com", "entries": [{"address": "c@d.org", "reason": True}]}
        ).encode(),
        "entries[0].reason must be a string, not true or false",
    ),
    (
        json.dumps({"domain": "example.com", "entries": [[["a@b.org"]]]}).encode(),
        "entries[0]: an address",
    ),
    (
        json.dumps({"domain": "example.com", "entries": {"a@b.org": 1}}).encode(),
        '{"entries": [...]}',
    ),
    (b'{"domain": "example.com", "entries": ["a\\ud800@b.org"]}', "not an address"),
    (
        json.dumps(
            {"domain": "example.com", "entries": [{"address": "x" * 400 + "@b.org"}]}
        ).encode(),
        "not an address",
    ),
]


@pytest.mark.parametrize(("body", "text"), ODD, ids=range(len(ODD)))
def test_odd_json_gets_400_naming_the_problem(
    api: Service, redis_client: SyncRedis, body: bytes, text: str
) -> None:
    status, got = answer(api, body)
    assert (status, got["reason"]) == (400, "bad-request"), got
    assert text in got["error"], got
    assert_serves(api, redis_client)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/suppressions/a%ED%A0%80@b.org",
        "/v1/suppressions/%00@b.org",
        "/v1/suppressions?domain=example.com&streamid=" + "x" * 5000,
        "/v1/suppressions?domain=example.com&streamid=a%0Ab",
        "/v1/suppressions?domain=example.com&limit=" + "9" * 5000,
        "/v1/suppressions?domain=%C0%80",
    ],
)
def test_odd_addresses_and_queries_get_400(
    api: Service, redis_client: SyncRedis, path: str
) -> None:
    status, data, _ = request(api, None, JSON, "GET", path)
    assert status in (400, 404), data[:200]
    assert json.loads(data)["reason"] in ("bad-request", "not-found")
    assert_serves(api, redis_client)
