"""HttpReceiver as a real process under hostile HTTP: malformed and binary bodies, wrong
types, wrong methods and paths, bodies over the limit (declared and chunked), malformed
framing, and slow clients that dribble bytes while a normal client must still be served."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis

from manycore_common.message import UUID_RE
from tests.helpers import LOOPBACK, RedisServer, Service, stored_item
from tests.hostile.conftest import IO_TIMEOUT, assert_alive, configured_service

MAX_SIZE = 100_000
GOOD_AUTH = "Basic " + base64.b64encode(b"apa:banan").decode()
IO_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Every status the API documents; anything else (500 above all) is a bug.
DOCUMENTED = {200, 400, 401, 404, 405, 408, 413, 415, 429, 503}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Service]:
    settings = {
        "httpreceiver.auth-throttle": {"max-failures": 100000, "delay-seconds": 0},
        "httpreceiver.max-message-size": MAX_SIZE,
    }
    directory = tmp_path_factory.mktemp("hostile-http")
    with configured_service("httpreceiver", directory, redis_server.port, settings) as service:
        yield service


def good_message(uuid: str) -> bytes:
    return (
        f"From: news@example.com\r\nTo: alice@example.net\r\nX-Uuid: {uuid}\r\n"
        "Subject: hi\r\n\r\nHello\r\n"
    ).encode()


def request(
    service: Service,
    body: bytes | list[bytes] | None,
    headers: dict[str, str],
    method: str = "POST",
    path: str = "/v1/mail/send",
) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection(LOOPBACK, int(service.port or 0), timeout=IO_TIMEOUT)
    try:
        chunked = isinstance(body, list)
        conn.request(
            method, path, body=iter(body) if isinstance(body, list) else body, headers=headers,
            encode_chunked=chunked,
        )  # fmt: skip
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        conn.close()


def assert_serves(service: Service, redis_client: SyncRedis) -> None:
    assert_alive(service)
    status, data, _ = request(
        service,
        good_message("httpnormal"),
        {"Authorization": GOOD_AUTH, "Content-Type": "message/rfc822"},
    )
    assert status == 200, data


def assert_documented(status: int, data: bytes, ctype: str, redis_client: SyncRedis) -> None:
    assert status in DOCUMENTED, (status, data)
    assert ctype.startswith("application/json"), (status, ctype, data)
    body = json.loads(data)
    if status == 200:
        assert UUID_RE.fullmatch(body["uuid"])
        stored = [stored_item(r).uuid for r in redis_client.lrange(body["queue"], 0, -1)]
        assert body["uuid"] in stored, "200 but the message is not in Redis"
    else:
        assert body["error"] and body["reason"], body


BODY = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        lambda uuid, junk: good_message("x").replace(b"X-Uuid: x", b"X-Uuid: " + uuid) + junk,
        st.sampled_from(
            [b"ok1", b"{{uuid}}", b"a:b", b"abc\rBcc: v@example.org", "ü".encode(), b""]
        ),
        st.binary(max_size=200),
    ),
    st.just(b'{"to": "alice@example.net", "subject": "json, not a message"}'),
    st.just(b"X-Uuid: big\r\n" + b"X-Pad: " + b"p" * (MAX_SIZE + 10) + b"\r\n\r\n"),
)
CONTENT_TYPE = st.one_of(
    st.sampled_from(
        ["message/rfc822"] * 10
        + [
            "application/octet-stream",
            "application/json",
            "message/rfc822; charset=binary",
            "MESSAGE/RFC822",
            "text/plain",
            "",
            "multipart/form-data; boundary=x",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
AUTH = st.sampled_from(
    [GOOD_AUTH] * 8
    + [
        "Basic " + base64.b64encode("apa:banan\u00e9".encode()).decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
        "Basic !!!",
        "Basic",
        "basic " + GOOD_AUTH[6:],
        "Bearer x",
        "",
        "Basic " + "A" * 5000,
    ]
)


@IO_SETTINGS
@given(
    body=BODY,
    content_type=CONTENT_TYPE,
    auth=AUTH,
    chunks=st.one_of(st.none(), st.integers(1, 997)),
    method=st.sampled_from(["POST"] * 12 + ["PUT", "GET", "DELETE", "PATCH"]),
    path=st.sampled_from(
        ["/v1/mail/send"] * 12
        + ["/v1/mail/send/", "/v1/mail/send?x=1", "//v1/mail/send", "/v1/x", "/v1/unsubscribe/x"]
    ),
)
def test_hostile_requests_get_documented_json_answers(
    api: Service,
    redis_client: SyncRedis,
    body: bytes,
    content_type: str,
    auth: str,
    chunks: int | None,
    method: str,
    path: str,
) -> None:
    headers = {"Content-Type": content_type, "Authorization": auth}
    payload: bytes | list[bytes] = body
    if chunks:
        payload = [body[i : i + chunks] for i in range(0, len(body), chunks)] or [b""]
    try:
        status, data, ctype = request(api, payload, headers, method, path)
    except (ConnectionError, http.client.RemoteDisconnected):
        # aiohttp may drop a connection whose header it rejects; still alive after?
        status = 0
    event(f"status {status}")
    if status:
        assert_documented(status, data, ctype, redis_client)
    assert_serves(api, redis_client)


def raw_exchange(service: Service, data: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, int(service.port or 0)), IO_TIMEOUT) as sock:
        sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


POST = b"POST /v1/mail/send HTTP/1.1\r\nHost: x\r\n"
AUTHED = f"Authorization: {GOOD_AUTH}\r\nContent-Type: message/rfc822\r\n".encode()
MALFORMED = [
    POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    POST + b"Content-Length: -1\r\n\r\n",
    POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    POST + b"Content-Length: 99999999999999999999999\r\n\r\n",
    POST + b"X-" + b"h" * 20000 + b": 1\r\n\r\n",
    b"POST /v1/mail/send HTTP/1.1\r\n" + b"X-A: 1\r\n" * 1000 + b"\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello on the plain port
    b"GARBAGE\r\n\r\n",
    b"POST /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/mail/send HTTP/9.9\r\nHost: x\r\n\r\n",
    POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"ffffffffffffffffff\r\n",
    b"\x00" * 1000,
    # Authenticated, so that the body is read: shorter than declared, then EOF.
    POST + AUTHED + b"Content-Length: 1000\r\n\r\nFrom: a@example.com\r\n",
    POST + AUTHED + b"Transfer-Encoding: chunked\r\n\r\n10\r\nFrom: a@exa",
    POST + AUTHED + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcdefghij\r\n0\r\n\r\n",
    POST + AUTHED + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    POST + AUTHED + b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_http_framing(api: Service, redis_client: SyncRedis, data: bytes) -> None:
    answer = raw_exchange(api, data)
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 or status == 505, answer[:300]
    assert_serves(api, redis_client)


def test_huge_chunked_body_is_refused_and_counted(api: Service, redis_client: SyncRedis) -> None:
    before = api.metric("nbr_dropped_emails_total", 'reason="too-large"')
    chunks = [good_message("hugechunk")] + [b"x" * 8192] * (3 * MAX_SIZE // 8192)
    status, data, ctype = request(
        api, chunks, {"Authorization": GOOD_AUTH, "Content-Type": "message/rfc822"}
    )
    assert status == 413, data
    assert_documented(status, data, ctype, redis_client)
    assert api.metric("nbr_dropped_emails_total", 'reason="too-large"') == before + 1
    assert_serves(api, redis_client)


def _dribble(port: int, stop: threading.Event, declared: int) -> None:
    with socket.create_connection((LOOPBACK, port), IO_TIMEOUT) as sock:
        sock.sendall(
            b"POST /v1/mail/send HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + GOOD_AUTH.encode()
            + b"\r\nContent-Type: message/rfc822\r\nContent-Length: "
            + str(declared).encode()
            + b"\r\n\r\n"
        )
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
            time.sleep(0.05)


def test_slow_clients_do_not_block_others(api: Service, redis_client: SyncRedis) -> None:
    stop = threading.Event()
    port = int(api.port or 0)
    slow = [threading.Thread(target=_dribble, args=(port, stop, 50_000)) for _ in range(20)]
    # Half a request line, never finished.
    idle = [socket.create_connection((LOOPBACK, port), IO_TIMEOUT) for _ in range(20)]
    for sock in idle:
        sock.sendall(b"POST /v1/mail/se")
    for thread in slow:
        thread.start()
    try:
        time.sleep(0.3)
        for _ in range(5):
            started = time.monotonic()
            assert_serves(api, redis_client)
            assert time.monotonic() - started < 2.0, "a normal request waited on slow clients"
    finally:
        stop.set()
        for thread in slow:
            thread.join(IO_TIMEOUT)
        for sock in idle:
            sock.close()
