"""Idempotent submission through the real Receiver and HttpReceiver (one redis-server): a
message sent again within the window gets the first answer and is queued once."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from tests.helpers import LOOPBACK, RedisServer, Service, running, stored_item
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import GOOD_AUTH, http_service
from tests.integration.test_receiver import connect, receiver_service

P0, P1 = "IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1"
OTHER_LOGIN = ("citron", "dadel")
OTHER_AUTH = "Basic " + base64.b64encode(":".join(OTHER_LOGIN).encode()).decode()
HTTP_LOGINS = [
    {"username": "apa", "password": "banan"},
    {"username": OTHER_LOGIN[0], "password": OTHER_LOGIN[1]},
]


def doors(
    directory: Path, redis_port: int, tls: tuple[Path, Path], **changes: Any
) -> list[Service]:
    """A Receiver and an HttpReceiver on one Redis, each with ``changes`` to its config."""
    window = changes.pop("window", None)
    common = {} if window is None else {"common-config__idempotency-window-seconds": window}
    return [
        receiver_service(directory / "smtp", redis_port, tls, **common, **changes),
        http_service(
            directory / "http", redis_port, **{"httpreceiver__auth-logins": HTTP_LOGINS}, **common
        ),
    ]


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
) -> Iterator[tuple[Service, Service]]:
    smtp, api = doors(tmp_path_factory.mktemp("idem"), redis_server.port, tls_files)
    with running(smtp), running(api):
        yield smtp, api


def send_smtp(service: Service, context: ssl.SSLContext, data: bytes) -> tuple[int, str]:
    with connect(service, context) as smtp:
        smtp.mail("anything@example.com")
        smtp.rcpt("ignored@example.net")
        code, reply = smtp.data(data)
        return code, reply.decode()


def post(
    service: Service, data: bytes, headers: dict[str, str] | None = None, auth: str = GOOD_AUTH
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(LOOPBACK, service.port, timeout=15)
    try:
        conn.putrequest("POST", "/v1/mail/send")
        for name, value in [
            ("Authorization", auth),
            ("Content-Type", "message/rfc822"),
            ("Content-Length", str(len(data))),
            *(headers or {}).items(),
        ]:
            conn.putheader(name, value)
        conn.endheaders(data)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def queued(client: SyncRedis) -> list[str]:
    raws = [*client.lrange(P0, 0, -1), *client.lrange(P1, 0, -1)]
    return sorted(stored_item(raw).uuid or "" for raw in raws)


def test_smtp_duplicate_gets_250_and_is_queued_once(
    both: tuple[Service, Service], client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    smtp, _ = both
    before = smtp.metric("receiver_duplicates_total")
    data = build_message("dup-smtp1")
    assert send_smtp(smtp, client_tls, data) == (250, "2.0.0 Queued as dup-smtp1 on " + P1)
    code, reply = send_smtp(smtp, client_tls, data)
    assert (code, reply) == (250, f"2.0.0 Already queued as dup-smtp1 on {P1} (duplicate X-Uuid)")
    assert queued(queues) == ["dup-smtp1"]
    assert smtp.metric("receiver_duplicates_total") == before + 1
    assert smtp.metric("nbr_emails_enqueued_total") >= 1


def test_http_duplicate_gets_the_first_answer_marked(
    both: tuple[Service, Service], queues: SyncRedis
) -> None:
    _, api = both
    before = api.metric("httpreceiver_duplicates_total", 'key="x-uuid"')
    assert post(api, build_message("dup-http1", "0")) == (200, {"uuid": "dup-http1", "queue": P0})
    # Sent again with another priority: the answer is still the first one's queue.
    again = post(api, build_message("dup-http1", "1"))
    assert again == (200, {"uuid": "dup-http1", "queue": P0, "duplicate": True})
    assert queued(queues) == ["dup-http1"] and queues.llen(P1) == 0
    assert api.metric("httpreceiver_duplicates_total", 'key="x-uuid"') == before + 1


def test_an_x_uuid_is_one_message_whichever_door(
    both: tuple[Service, Service], client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    smtp, api = both
    assert send_smtp(smtp, client_tls, build_message("cross1"))[0] == 250
    assert post(api, build_message("cross1"))[1].get("duplicate") is True
    # Another login, same customer: still the same message.
    assert post(api, build_message("cross1"), auth=OTHER_AUTH)[1].get("duplicate") is True
    assert post(api, build_message("cross2"))[0] == 200
    code, reply = send_smtp(smtp, client_tls, build_message("cross2"))
    assert code == 250 and "duplicate" in reply
    assert queued(queues) == ["cross1", "cross2"]


def test_concurrent_duplicates_queue_exactly_one_each(
    both: tuple[Service, Service], client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    """50 submissions of 10 uuids at once, half over SMTP, half over HTTP."""
    smtp, api = both

    def submit(n: int) -> bool:
        data = build_message(f"conc{n % 10}")
        if n % 2:
            code, reply = send_smtp(smtp, client_tls, data)
            assert code == 250, reply
            return "duplicate" in reply
        status, body = post(api, data)
        assert status == 200, body
        return bool(body.get("duplicate"))

    with ThreadPoolExecutor(50) as pool:
        duplicates = list(pool.map(submit, range(50)))
    assert sum(duplicates) == 40
    assert queued(queues) == [f"conc{i}" for i in range(10)]


def test_idempotency_key_takes_precedence_per_login(
    both: tuple[Service, Service], queues: SyncRedis
) -> None:
    _, api = both
    before = api.metric("httpreceiver_duplicates_total", 'key="idempotency-key"')
    reused = api.metric("nbr_dropped_emails_total", 'reason="idempotency-key-reused"')
    key = {"Idempotency-Key": '"order-7"'}
    assert post(api, build_message("ik1"), key) == (200, {"uuid": "ik1", "queue": P1})
    # The X-Uuid is not claimed when a key is given: another key, same X-Uuid, is queued.
    assert post(api, build_message("ik1"), {"Idempotency-Key": "order-8"})[0] == 200
    duplicate = {"uuid": "ik1", "queue": P1, "duplicate": True}
    assert post(api, build_message("ik1"), key) == (200, duplicate)
    # The same key with another message: 422, as the draft asks.
    status, body = post(api, build_message("ik2"), key)
    assert (status, body["reason"]) == (422, "idempotency-key-reused")
    assert "ik1" in body["error"]
    # The same key and X-Uuid with another body: 422 too, not a silent duplicate (Stripe's
    # API answers a reused key with other parameters the same way).
    changed = build_message("ik1", body="Another text\r\n")
    status, body = post(api, changed, key)
    assert (status, body["reason"]) == (422, "idempotency-key-reused")
    assert "another request body" in body["error"]
    # Keys are the client's own: another login's "order-7" is another message.
    assert post(api, build_message("ik3"), key, auth=OTHER_AUTH)[1] == {"uuid": "ik3", "queue": P1}
    assert queued(queues) == ["ik1", "ik1", "ik3"]
    assert api.metric("httpreceiver_duplicates_total", 'key="idempotency-key"') == before + 1
    assert api.metric("nbr_dropped_emails_total", 'reason="idempotency-key-reused"') == reused + 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Idempotency-Key": "k" * 256},
        {"Idempotency-Key": "caf\u00e9"},
        {"Idempotency-Key": '""'},
        {"Idempotency-Key": ""},
    ],
)
def test_a_bad_idempotency_key_gets_400(
    both: tuple[Service, Service], queues: SyncRedis, headers: dict[str, str]
) -> None:
    _, api = both
    before = api.metric("nbr_dropped_emails_total", 'reason="bad-idempotency-key"')
    status, body = post(api, build_message("badkey"), headers)
    assert (status, body["reason"]) == (400, "bad-idempotency-key")
    assert "255 printable ASCII" in body["error"]
    assert api.metric("nbr_dropped_emails_total", 'reason="bad-idempotency-key"') == before + 1
    assert queued(queues) == []


def test_two_idempotency_key_headers_get_400(
    both: tuple[Service, Service], queues: SyncRedis
) -> None:
    _, api = both
    conn = http.client.HTTPConnection(LOOPBACK, api.port, timeout=15)
    data = build_message("twokeys")
    conn.putrequest("POST", "/v1/mail/send")
    for name, value in [("Authorization", GOOD_AUTH), ("Content-Type", "message/rfc822"),
                        ("Content-Length", str(len(data))), ("Idempotency-Key", "a"),
                        ("Idempotency-Key", "b")]:  # fmt: skip
        conn.putheader(name, value)
    conn.endheaders(data)
    response = conn.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error"] == "Idempotency-Key appears more than once"
    conn.close()
    assert queued(queues) == []


def test_after_the_window_the_same_uuid_is_a_new_message(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
) -> None:
    smtp, api = doors(tmp_path, redis_server.port, tls_files, window=1)
    with running(smtp), running(api):
        data = build_message("short1")
        assert "Queued as" in send_smtp(smtp, client_tls, data)[1]
        assert post(api, data)[1].get("duplicate") is True
        time.sleep(1.3)
        assert post(api, data) == (200, {"uuid": "short1", "queue": P1})
        assert "duplicate" in send_smtp(smtp, client_tls, data)[1]
    assert queued(queues) == ["short1", "short1"]


def test_window_zero_turns_it_off(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
) -> None:
    smtp, api = doors(tmp_path, redis_server.port, tls_files, window=0)
    with running(smtp), running(api):
        data = build_message("off1")
        assert send_smtp(smtp, client_tls, data) == (250, f"2.0.0 Queued as off1 on {P1}")
        assert post(api, data) == (200, {"uuid": "off1", "queue": P1})
        assert post(api, data, {"Idempotency-Key": "k"}) == (200, {"uuid": "off1", "queue": P1})
    assert queued(queues) == ["off1"] * 3
    assert queues.keys("idem:*") == []


def test_a_refused_push_leaves_no_claim(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
) -> None:
    """Above the high-water mark a new message gets 451 and claims nothing, so it is queued
    when sent again later; a duplicate of a queued message still gets its 250."""
    smtp, api = doors(tmp_path, redis_server.port, tls_files)
    for service in (smtp, api):
        text = service.global_file.read_text()
        service.global_file.write_text(
            text.replace("high-water-mark: 100000", "high-water-mark: 1")
        )
    with running(smtp), running(api):
        assert send_smtp(smtp, client_tls, build_message("hw1"))[0] == 250
        code, reply = send_smtp(smtp, client_tls, build_message("hw2"))
        assert code == 451 and "full" in reply
        assert post(api, build_message("hw2"))[0] == 503
        code, reply = send_smtp(smtp, client_tls, build_message("hw1"))
        assert code == 250 and "duplicate" in reply
        assert post(api, build_message("hw1"))[1].get("duplicate") is True
        queues.delete(P1)  # the Transformer took it
        assert post(api, build_message("hw2")) == (200, {"uuid": "hw2", "queue": P1})
    assert queued(queues) == ["hw2"]
