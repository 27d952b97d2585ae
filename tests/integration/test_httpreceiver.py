"""HttpReceiver as a real process, driven by a real HTTP client (http.client)."""

from __future__ import annotations

import base64
import http.client
import json
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common import item as item_format
from manycore_common import keyspace
from tests.helpers import (
    LOOPBACK,
    RedisServer,
    Service,
    running,
    stored_item,
    wait_for,
    write_configs,
)
from tests.integration.conftest import build_message, set_path

P0, P1 = "IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1"
GOOD_AUTH = "Basic " + base64.b64encode(b"apa:banan").decode()
RFC822 = "message/rfc822"


def http_service(directory: Path, redis_port: int, **changes: Any) -> Service:
    def change(customer: dict[str, Any]) -> None:
        set_path(customer, "httpreceiver.auth-throttle", {"max-failures": 1000, "delay-seconds": 0})
        for path, value in changes.items():
            set_path(customer, path.replace("__", "."), value)

    global_file, customer_file = write_configs(directory, redis_port, change)
    return Service("httpreceiver", global_file, customer_file, directory / "httpreceiver.log")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Service]:
    with running(http_service(tmp_path_factory.mktemp("http"), redis_server.port)) as service:
        yield service


def post(
    service: Service,
    body: bytes | Iterable[bytes],
    *,
    auth: str | None = GOOD_AUTH,
    content_type: str | None = RFC822,
    path: str = "/v1/mail/send",
    method: str = "POST",
) -> tuple[int, dict[str, str], dict[str, Any]]:
    conn = http.client.HTTPConnection(LOOPBACK, service.port, timeout=15)
    headers = {}
    if auth:
        headers["Authorization"] = auth
    if content_type:
        headers["Content-Type"] = content_type
    chunked = not isinstance(body, bytes)
    conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    assert response.getheader("Content-Type", "").startswith("application/json"), data
    return response.status, dict(response.getheaders()), json.loads(data)


def queued(client: SyncRedis, queue: str) -> list[item_format.Item]:
    return [stored_item(raw) for raw in client.lrange(queue, 0, -1)]


def test_messages_land_byte_for_byte_by_priority(api: Service, queues: SyncRedis) -> None:
    high = build_message("hhigh", "0", stream_id="s1")
    low = build_message("hlow", None)
    status, _, body = post(api, high)
    assert (status, body) == (200, {"uuid": "hhigh", "queue": P0})
    status, _, body = post(api, low, content_type="application/octet-stream")
    assert (status, body) == (200, {"uuid": "hlow", "queue": P1})
    assert [i.payload for i in queued(queues, P0)] == [high]
    assert [i.payload for i in queued(queues, P1)] == [low]
    item = queued(queues, P0)[0]
    assert item.header["source"] == "http" and item.stream_id == "s1"
    assert api.metric("nbr_emails_enqueued_total") >= 2


def test_hyphenated_uuid_accepted_and_the_rule_named_on_refusal(
    api: Service, queues: SyncRedis
) -> None:
    uuid = "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c"
    status, _, body = post(api, build_message(uuid))
    assert (status, body) == (200, {"uuid": uuid, "queue": P1})
    status, _, body = post(api, build_message(uuid + "0"))
    assert (status, body["reason"]) == (400, "bad-uuid")
    assert body["error"] == (
        "Invalid X-Uuid header: use 1 to 36 characters of a-z, 0-9 and '-', "
        "not starting or ending with '-' (a lower-case RFC 4122 UUID fits)"
    )
    assert [i.uuid for i in queued(queues, P1)] == [uuid]


def test_chunked_upload(api: Service, queues: SyncRedis) -> None:
    data = build_message("chunky", body="line\r\n" * 2000)
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    status, _, _ = post(api, iter(chunks))
    assert status == 200
    assert queued(queues, P1)[0].payload == data


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "missing"),
        ("Basic " + base64.b64encode(b"apa:wrong").decode(), "bad-credentials"),
        ("Basic !!!notbase64", "bad-credentials"),
        ("Bearer abc", "bad-credentials"),
    ],
)
def test_auth_failures_get_401(
    api: Service, queues: SyncRedis, auth: str | None, reason: str
) -> None:
    before = api.metric("httpreceiver_auth_failures_total", f'reason="{reason}"')
    status, headers, body = post(api, build_message("x1"), auth=auth)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    assert body["reason"] == "unauthorized" and body["error"]
    assert api.metric("httpreceiver_auth_failures_total", f'reason="{reason}"') == before + 1
    assert queues.llen(P1) == 0


def test_wrong_content_type_gets_415(api: Service) -> None:
    status, _, body = post(api, build_message("x1"), content_type="application/json")
    assert status == 415
    assert "message/rfc822" in body["error"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (build_message(None), "missing-uuid"),
        (build_message("NOT-OK"), "bad-uuid"),
        (build_message("u1", "2"), "bad-priority"),
        (build_message("u1", sender="nobody"), "bad-from"),
        (build_message("u1", to="undisclosed-recipients:;", cc=None), "no-recipients"),
        (b"\x00\xff binary junk", "bad-headers"),
    ],
)
def test_bad_messages_get_400(api: Service, queues: SyncRedis, data: bytes, reason: str) -> None:
    before = api.metric("nbr_dropped_emails_total", f'reason="{reason}"')
    status, _, body = post(api, data)
    assert status == 400
    assert body["reason"] == reason and body["error"]
    assert api.metric("nbr_dropped_emails_total", f'reason="{reason}"') == before + 1
    assert queues.llen(P0) + queues.llen(P1) == 0


def test_unknown_route_and_method_are_json(api: Service) -> None:
    assert post(api, b"", path="/nope")[0] == 404
    assert post(api, b"", method="PUT")[0] == 405


def test_too_large_gets_413_declared_or_chunked(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    with running(
        http_service(tmp_path, redis_server.port, **{"httpreceiver__max-message-size": 5000})
    ) as service:
        big = build_message("big", body="x" * 6000)
        status, _, body = post(service, big)
        assert status == 413 and body["reason"] == "too-large"
        status, _, body = post(service, iter([big[:3000], big[3000:]]))
        assert status == 413
        assert service.metric("nbr_dropped_emails_total", 'reason="too-large"') == 2
    assert queues.llen(P1) == 0


def test_redis_down_means_503_with_retry_after(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    service = http_service(tmp_path / "cfg", redis.port)
    try:
        with running(service):
            assert post(service, build_message("before"))[0] == 200
            redis.stop()
            wait_for(lambda: service.readyz()[0] == 503, what="readyz to report redis down")
            status, headers, body = post(service, build_message("during"))
            assert status == 503 and int(headers["Retry-After"]) > 0
            assert body["reason"] == "redis-unavailable"
            redis.start()
            wait_for(service.ready, what="readyz to recover")
            assert post(service, build_message("after"))[0] == 200
        client = SyncRedis(host=LOOPBACK, port=redis.port)
        assert [stored_item(r).uuid for r in client.lrange(P1, 0, -1)] == ["after"]
        client.close()
    finally:
        redis.stop()


def test_sigterm_stops_cleanly(tmp_path: Path, redis_server: RedisServer) -> None:
    service = http_service(tmp_path, redis_server.port).start()
    assert service.stop(signal.SIGTERM) == 0
    assert "banan" not in service.log.read_text()


def test_missing_content_type_gets_415(api: Service) -> None:
    status, _, body = post(api, build_message("x1"), content_type=None)
    assert status == 415 and "got none" in body["error"]


UNSUB_SECRET = "test-only-unsubscribe-secret-0123456789"


def request(service: Service, method: str, path: str, accept: str = "*/*") -> tuple[int, str]:
    conn = http.client.HTTPConnection(LOOPBACK, service.port, timeout=15)
    body = b"List-Unsubscribe=One-Click" if method == "POST" else None
    headers = {"Accept": accept}
    if body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, text


def test_one_click_unsubscribe(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    from manycore_common.unsubscribe import make_message_token as make_token

    service = http_service(
        tmp_path, redis_server.port, **{"common-config__unsubscribe-secret": UNSUB_SECRET}
    )
    token = make_token(UNSUB_SECRET.encode(), "u55", "camp1")
    forged = make_token(b"not-our-secret-0123456789abcdefghijk", "u55", "camp1")
    with running(service):
        status, text = request(service, "GET", f"/v1/unsubscribe/{token}", "text/html")
        assert status == 200 and '<form method="post"' in text
        assert queues.llen("EVENT_QUEUE") == 0  # GET alone never unsubscribes
        assert request(service, "GET", f"/v1/unsubscribe/{forged}")[0] == 404
        status, text = request(service, "POST", f"/v1/unsubscribe/{token}")
        assert status == 200 and json.loads(text) == {"unsubscribed": True}
        # Providers may POST again: still 200, still one event.
        assert request(service, "POST", f"/v1/unsubscribe/{token}", "text/html")[0] == 200
        assert request(service, "POST", f"/v1/unsubscribe/{forged}")[0] == 404
        assert request(service, "POST", "/v1/unsubscribe/garbage")[0] == 404
        assert service.metric("httpreceiver_unsubscribe_total", 'result="ok"') == 1
        assert service.metric("httpreceiver_unsubscribe_total", 'result="repeated"') == 1
        assert service.metric("httpreceiver_unsubscribe_total", 'result="invalid"') == 3
    (raw,) = queues.lrange("EVENT_QUEUE", 0, -1)
    event = json.loads(stored_item(raw).payload)
    assert event["event"] == "unsubscribe"
    assert (event["uuid"], event["streamid"]) == ("u55", "camp1")
    assert event["id"] and event["timestamp"] > 0


def test_old_unsubscribe_links_get_410_and_point_to_the_mailto(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    import time

    from manycore_common.unsubscribe import make_message_token as make_token
    from tests.unit.test_unsubscribe_token import untimed_token

    secret = UNSUB_SECRET.encode()
    day = 24 * 3600
    service = http_service(
        tmp_path,
        redis_server.port,
        **{
            "common-config__unsubscribe-secret": UNSUB_SECRET,
            "httpreceiver__unsubscribe-token-max-age-days": 30,
        },
    )
    now = int(time.time())
    fresh = make_token(secret, "fresh1", issued=now - 29 * day)
    old = make_token(secret, "old1", issued=now - 31 * day)
    # The old token with its time moved forward: the MAC no longer matches.
    payload, _, mac = old.partition(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    moved = raw.replace(str(now - 31 * day).encode(), str(now).encode())
    altered = base64.urlsafe_b64encode(moved).rstrip(b"=").decode() + "." + mac
    with running(service):
        status, text = request(service, "GET", f"/v1/unsubscribe/{old}", "text/html")
        assert status == 410 and "mailto:" in text and "<form" not in text
        status, text = request(service, "POST", f"/v1/unsubscribe/{old}")
        assert status == 410 and json.loads(text)["reason"] == "expired"
        assert request(service, "POST", f"/v1/unsubscribe/{old}", "text/html")[0] == 410
        assert request(service, "GET", f"/v1/unsubscribe/{altered}")[0] == 404
        assert request(service, "POST", f"/v1/unsubscribe/{altered}")[0] == 404
        assert request(service, "POST", f"/v1/unsubscribe/{fresh}")[0] == 200
        # A link from before issue times is honoured, counted from the first one seen...
        legacy = untimed_token(secret, "legacy1")
        assert request(service, "POST", f"/v1/unsubscribe/{legacy}")[0] == 200
        first_seen = int(queues.get(keyspace.current().untimed_since()) or 0)
        assert abs(first_seen - now) < 60
        # ...until max age after that.
        queues.set(keyspace.current().untimed_since(), now - 31 * day)
        assert request(service, "POST", f"/v1/unsubscribe/{legacy}")[0] == 410
        assert request(service, "GET", f"/v1/unsubscribe/{legacy}")[0] == 410
        assert service.metric("httpreceiver_unsubscribe_total", 'result="expired"') == 5
        assert service.metric("httpreceiver_unsubscribe_total", 'result="invalid"') == 2
    events = [json.loads(stored_item(r).payload) for r in queues.lrange("EVENT_QUEUE", 0, -1)]
    assert sorted(e["uuid"] for e in events) == ["fresh1", "legacy1"]
