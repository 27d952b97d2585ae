"""BackData as a real process against a real Redis and a real local webhook (aiohttp on
127.0.0.1). After every scenario each event is either received by the webhook (at least once,
id intact) or in the dead-letter list with the reason: none is missing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_backdata import signature
from manycore_common import events
from manycore_common import item as item_format
from manycore_common.tls import self_signed_pem
from tests.helpers import (
    LOOPBACK,
    RedisServer,
    Service,
    running,
    stored_item,
    wait_for,
    write_configs,
)
from tests.integration.conftest import set_path
from tests.integration.webhook import Answer, Webhook

QUEUE, DEAD = "EVENT_QUEUE", "{EVENT_QUEUE}:dead"
SECRET = "test-signing-secret"
TOKEN = "Bearer test-token"
KINDS: list[tuple[events.EventType, dict[str, Any]]] = [
    ("delivered", {"ip": "192.0.2.1", "rcpt": "alice@example.net"}),
    ("bounce", {"type": "hard", "reason": "550 5.1.1", "ip": "192.0.2.1", "rcpt": "b@x.org"}),
    ("unsubscribe", {}),
    ("spam-report", {"email": "carol@example.org"}),
    ("error", {"service": "transformer", "msg": "unknown From domain"}),
]
METRICS = {
    "delivered": "delivered_events_total",
    "bounce": "bounced_events_total",
    "unsubscribe": "unsubscribe_events_total",
    "spam-report": "spam_report_events_total",
    "error": "error_events_total",
}


@pytest.fixture
def hook() -> Iterator[Webhook]:
    webhook = Webhook()
    yield webhook
    webhook.close()


def backdata(directory: Path, redis_port: int, url: str, **changes: Any) -> Service:
    """The service with fast retries, a signing secret and an Authorization header."""
    settings: dict[str, Any] = {
        "post-url": url,
        "batch-size": 50,
        "concurrency": 2,
        "timeout-seconds": 1,
        "retry-initial-seconds": 0.05,
        "retry-max-seconds": 0.2,
        "signing-secret": SECRET,
        "headers": {"Authorization": TOKEN},
    }
    settings.update({k.replace("_", "-"): v for k, v in changes.items()})

    def change(customer: dict[str, Any]) -> None:
        for key, value in settings.items():
            set_path(customer, f"backdata.{key}", value)

    global_file, customer_file = write_configs(directory, redis_port, change)
    return Service("backdata", global_file, customer_file, directory / "backdata.log")


def push(client: SyncRedis, count: int, *, uuid: str | None = None) -> list[str]:
    """``count`` events of every kind in turn; returns their ids in queue order."""
    ids = []
    for n in range(count):
        kind, fields = KINDS[n % len(KINDS)]
        event = events.new_event(kind, uuid=uuid or f"m{n}", seq=n, **fields)
        client.lpush(QUEUE, events.encode_event(event, source="test"))
        ids.append(event["id"])
    return ids


def dead_letters(client: SyncRedis) -> list[tuple[dict[str, Any] | None, str]]:
    """(event or None if not JSON, reason) of every dead letter, oldest first."""
    out = []
    for raw in reversed(client.lrange(DEAD, 0, -1)):
        item = stored_item(raw)
        try:
            event = json.loads(item.payload)
        except ValueError:
            event = None
        out.append((event, item.dead_reason or ""))
    return out


def held(client: SyncRedis) -> int:
    return sum(client.llen(k) for k in client.keys(f"{{{QUEUE}}}:processing:*"))


# Waiting plus held, read in one step (a take between two reads would move items across).
_IN_REDIS = """
local n = redis.call('LLEN', KEYS[1])
for _, key in ipairs(redis.call('KEYS', '{' .. KEYS[1] .. '}:processing:*')) do
  n = n + redis.call('LLEN', key)
end
return n
"""


def in_redis(client: SyncRedis) -> int:
    return int(client.eval(_IN_REDIS, 1, QUEUE))


def assert_accounted(client: SyncRedis, hook: Webhook, ids: list[str]) -> None:
    """Every id received or dead-lettered with a reason; nothing left behind anywhere."""
    dead = {e["id"]: reason for e, reason in dead_letters(client) if e and "id" in e}
    received = hook.ids()
    missing = [i for i in ids if i not in received and i not in dead]
    assert not missing, f"{len(missing)} events lost"
    assert all(dead.values()), "a dead letter without a reason"
    assert client.llen(QUEUE) == 0 and held(client) == 0


def delivered_all(hook: Webhook, ids: list[str]) -> bool:
    return set(ids) <= hook.ids()


def wait_settled(service: Service, queues: SyncRedis, pushed: int) -> None:
    """The webhook records a batch before the service has its answer: wait until the
    service has acked it too before reading its counters."""
    wait_for(
        lambda: (
            in_redis(queues) == 0 and service.metric("successfully_pushed_events_total") == pushed
        ),
        what=f"{pushed} events acked",
    )


def test_accepts_signed_batches_and_quarantines_malformed_items(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.start()
    first = push(queues, 60)
    # One item whose payload is not JSON, one without "event", one without even a header,
    # then good ones: the bad ones go to the dead-letter list, the rest of their batch is
    # still delivered.
    queues.lpush(QUEUE, item_format.new_item(b"{not json", source="test"))
    queues.lpush(QUEUE, item_format.new_item(b'{"id": "x1", "uuid": "u"}', source="test"))
    queues.lpush(QUEUE, b"bytes that are not even a queue item")
    ids = first + push(queues, 60)
    with running(backdata(tmp_path, redis_server.port, hook.url)) as service:
        wait_for(lambda: delivered_all(hook, ids), what="all events delivered")
        wait_for(lambda: queues.llen(DEAD) == 3, what="three dead letters")
        wait_settled(service, queues, 120)
        assert service.metric("malformed_events_total") == 3
        assert service.metric("failed_pushed_events_total") == 0
        for name in METRICS.values():
            assert service.metric(name) == 24, name
        assert service.metric("number_of_events_currently_posting") == 0
    assert_accounted(queues, hook, ids)
    reasons = [reason for _, reason in dead_letters(queues)]
    assert reasons[0].startswith("malformed event: not JSON")
    assert reasons[1] == 'malformed event: no "event" field'
    assert reasons[2] == "malformed event: the queue item has no valid header"
    assert len(hook.received) == 120  # no failure, so no duplicate
    for request in hook.requests:
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == TOKEN
        header = request.headers[signature.HEADER]
        assert signature.verify(SECRET.encode(), header, request.body, time.time())
        assert not signature.verify(b"other secret", header, request.body, time.time())
        assert 1 <= len(json.loads(request.body)) <= 50
    # Events arrive as queued: the webhook sees exactly what the producer wrote.
    assert hook.received[0]["event"] == "delivered" and hook.received[0]["ip"] == "192.0.2.1"


def test_500s_are_retried_until_accepted(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.script = [Answer(500, b"database down")] * 4
    hook.start()
    ids = push(queues, 30)
    with running(backdata(tmp_path, redis_server.port, hook.url, concurrency=1)) as service:
        wait_for(lambda: delivered_all(hook, ids), what="delivered after the 500s")
        wait_settled(service, queues, 30)
        assert service.metric("backdata_post_retries_total", 'reason="http-5xx"') == 4
        assert service.metric("failed_pushed_events_total") == 4 * 30
    assert [r.status for r in hook.requests] == [500, 500, 500, 500, 200]
    # The same batch, in the same order, every time.
    assert len({r.body for r in hook.requests}) == 1
    assert_accounted(queues, hook, ids)


def test_429_retry_after_is_honoured(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.script = [Answer(429, b"slow down", {"Retry-After": "1"})]
    hook.start()
    ids = push(queues, 10)
    with running(backdata(tmp_path, redis_server.port, hook.url, concurrency=1)) as service:
        wait_for(lambda: delivered_all(hook, ids), what="delivered after the 429")
        assert service.metric("backdata_post_retries_total", 'reason="http-429"') == 1
    first, second = hook.requests[:2]
    # Our own backoff is capped at 0.2 s here; the server asked for 1 s.
    assert second.at - first.at >= 0.95
    assert_accounted(queues, hook, ids)


def test_a_webhook_slower_than_the_timeout_is_retried(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.script = [Answer(200, delay=2.0)]  # answers after our 0.5 s timeout
    hook.start()
    ids = push(queues, 20)
    service = backdata(tmp_path, redis_server.port, hook.url, concurrency=1, timeout_seconds=0.5)
    with running(service):
        wait_for(lambda: delivered_all(hook, ids), what="delivered after the timeout")
        assert service.metric("backdata_post_retries_total", 'reason="timeout"') == 1
    assert len(hook.requests) >= 2
    assert_accounted(queues, hook, ids)


def test_events_wait_in_redis_while_the_webhook_is_down(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    ids = push(queues, 2000)
    service = backdata(tmp_path, redis_server.port, hook.url, batch_size=20, concurrency=3)
    with running(service):
        wait_for(
            lambda: service.metric("backdata_post_retries_total", 'reason="connection"') >= 6,
            what="connection failures",
        )
        # The backlog is in Redis: at most concurrency x batch-size events in our hands.
        assert held(queues) <= 3 * 20
        assert in_redis(queues) == 2000
        assert service.metric("backdata_events_held") <= 3 * 20
        wait_for(lambda: service.metric("backdata_oldest_event_age_seconds") > 0, what="age")
        hook.start()
        wait_for(lambda: delivered_all(hook, ids), what="delivered once the webhook is back")
        wait_settled(service, queues, 2000)
    assert_accounted(queues, hook, ids)


def test_400_dead_letters_the_batch_with_the_answer_and_requeue_delivers_it(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.default = Answer(400, b'{"error": "unknown field seq"}')
    hook.start()
    ids = push(queues, 30)
    service = backdata(tmp_path, redis_server.port, hook.url, concurrency=1)
    with running(service):
        wait_for(
            lambda: (
                service.metric("backdata_dead_lettered_events_total", 'reason="rejected"') == 30
            ),
            what="the batch dead-lettered",
        )
        assert service.metric("failed_pushed_events_total") == 30
        assert len(hook.requests) == 1  # not retried blindly
        assert_accounted(queues, hook, ids)
        for _, reason in dead_letters(queues):
            assert reason == (
                'webhook rejected the batch: webhook answered 400: {"error": "unknown field seq"}'
            )
        # The operator fixes the endpoint and requeues with the existing command.
        hook.default = Answer(200)
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("manycore-queues")),
                "--global-config-file",
                str(service.global_file),
                "--customer-config-file",
                str(service.customer_file),
                "--section",
                "backdata",
                "requeue",
                QUEUE,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        wait_for(lambda: delivered_all(hook, ids), what="requeued events delivered")
    assert queues.llen(DEAD) == 0
    assert_accounted(queues, hook, ids)


def test_events_older_than_max_age_go_to_dead_letters(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.default = Answer(503, b"maintenance")
    hook.start()
    ids = push(queues, 10)
    service = backdata(tmp_path, redis_server.port, hook.url, max_event_age_seconds=1)
    with running(service):
        wait_for(
            lambda: service.metric("backdata_dead_lettered_events_total", 'reason="expired"') == 10,
            what="expired events dead-lettered",
        )
    for _, reason in dead_letters(queues):
        assert reason.startswith("expired: not delivered within max-event-age-seconds (1)")
        assert reason.endswith("last attempt: webhook answered 503: maintenance")
    assert_accounted(queues, hook, ids)


def test_sigterm_returns_the_unsent_batch_to_the_front_of_the_queue(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.default = Answer(500)
    hook.start()
    ids = push(queues, 30)
    service = backdata(tmp_path, redis_server.port, hook.url, batch_size=10).start()
    wait_for(lambda: len(hook.requests) >= 3, what="failing attempts")
    assert service.stop(signal.SIGTERM) == 0
    assert queues.llen(QUEUE) == 30 and held(queues) == 0
    assert queues.zcard(f"{{{QUEUE}}}:consumers") == 0
    # Still in queue order: the oldest (first pushed) is served next.
    waiting = [json.loads(stored_item(r).payload)["id"] for r in queues.lrange(QUEUE, 0, -1)]
    assert waiting[::-1] == ids


def test_ten_thousand_events_arrive_complete(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    hook.start()
    ids: list[str] = []
    pipe = queues.pipeline(transaction=False)
    for n in range(10_000):
        event = events.new_event("delivered", uuid=f"m{n}", rcpt=f"r{n}@example.net")
        pipe.lpush(QUEUE, events.encode_event(event, source="test"))
        ids.append(event["id"])
    pipe.execute()
    with running(backdata(tmp_path, redis_server.port, hook.url, concurrency=4)) as service:
        wait_for(lambda: hook.count() >= 10_000, timeout=30, what="10,000 events")
        wait_settled(service, queues, 10_000)
        assert service.metric("delivered_events_total") == 10_000
    assert hook.ids() == set(ids) and hook.count() == 10_000
    assert_accounted(queues, hook, ids)


def test_events_of_one_message_keep_their_order_across_posters_and_retries(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    # Every third POST fails, so batches are retried while other posters go on.
    hook.script = [Answer(500) if n % 3 == 0 else Answer(200) for n in range(300)]
    hook.start()
    ids = []
    for n in range(400):
        event = events.new_event("delivered", uuid=f"m{n % 7}", seq=n, rcpt="a@example.net")
        queues.lpush(QUEUE, events.encode_event(event, source="test"))
        ids.append(event["id"])
    service = backdata(tmp_path, redis_server.port, hook.url, batch_size=5, concurrency=4)
    with running(service):
        wait_for(lambda: delivered_all(hook, ids), what="all delivered")
    seen: dict[str, int] = {}
    for event in hook.received:
        previous = seen.get(event["uuid"], -1)
        assert event["seq"] > previous, f"{event['uuid']}: {event['seq']} after {previous}"
        seen[event["uuid"]] = event["seq"]
    assert_accounted(queues, hook, ids)


def test_https_webhook_verified_against_a_private_ca(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    import ssl

    cert, key = self_signed_pem("localhost", ip_addresses=(LOOPBACK,))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "webhook-ca.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "configs" / "webhook-ca.pem", tmp_path / "key.pem")
    hook = Webhook(ssl_context=context).start()
    try:
        ids = push(queues, 10)
        service = backdata(
            tmp_path / "configs", redis_server.port, hook.url, tls_ca_file="webhook-ca.pem"
        )
        with running(service):
            wait_for(lambda: delivered_all(hook, ids), what="delivered over TLS")
        assert_accounted(queues, hook, ids)
    finally:
        hook.close()


def test_a_trickle_of_events_is_batched_within_batch_wait(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, hook: Webhook
) -> None:
    """Events arriving one by one (as mail is delivered) share a POST when they come within
    batch-wait-seconds of the first; with 0 each goes alone, as soon as it is taken."""
    hook.start()
    with running(backdata(tmp_path, redis_server.port, hook.url, batch_wait_seconds=1.0)):
        ids: list[str] = []
        for n in range(5):
            ids += push(queues, 1, uuid=f"trickle{n}")
            time.sleep(0.05)
        wait_for(lambda: delivered_all(hook, ids), what="the trickle delivered")
    assert len(hook.requests) == 1, [len(json.loads(r.body)) for r in hook.requests]
    assert [e["id"] for e in hook.received] == ids
