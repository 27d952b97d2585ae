"""One-click unsubscribe per recipient, through the real services: the Transformer mints one
token per recipient's copy, the real HttpReceiver turns each POST into that person's
``unsubscribe`` event and suppression entry, and the Transformer then drops them."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis

from manycore_common import item as item_format
from manycore_common import keyspace
from manycore_common import suppression as s
from manycore_common.unsubscribe import make_message_token, make_token
from tests.helpers import (
    RedisServer,
    Service,
    running,
    stored_item,
    wait_for,
    write_configs,
    write_dkim_keys,
)
from tests.integration.conftest import build_message, set_path
from tests.integration.test_httpreceiver import UNSUB_SECRET, request

P1, OUT, EVENTS = "IB-MAIL-QUEUE-P1", "INCOMING-TO-POSTFIX", "EVENT_QUEUE"
URL = "https://mail.example.com/v1/unsubscribe/"
MAILTO, TOKEN = "{{unsubscribe-address}}", "{{unsubscribe-token}}"
UUID = "6a1e4b2c-8d3f-4e5a-9b7c-0d1e2f3a4b5c"
ANN, BOB, CAROL = "ann@example.org", "Bob@Example.ORG", "carol@example.net"


def services(directory: Path, redis_port: int, **changes: Any) -> tuple[Service, Service]:
    """HttpReceiver and the Transformer on one config (they share the unsubscribe secret)."""

    def change(customer: dict[str, Any]) -> None:
        set_path(customer, "common-config.unsubscribe-secret", UNSUB_SECRET)
        set_path(
            customer,
            "transformer.email-headers.inject",
            {"List-Unsubscribe": f"<mailto:{MAILTO}>, <{URL}{TOKEN}>"},
        )
        for path, value in changes.items():
            set_path(customer, path.replace("__", "."), value)

    global_file, customer_file = write_configs(directory, redis_port, change)
    write_dkim_keys(directory)
    return (
        Service("httpreceiver", global_file, customer_file, directory / "httpreceiver.log"),
        Service("transformer", global_file, customer_file, directory / "transformer.log"),
    )


def enqueue(client: SyncRedis, uuid: str, rcpts: list[str]) -> None:
    data = build_message(uuid, to=", ".join(rcpts), cc=None)
    client.lpush(P1, item_format.new_item(data, source="test", uuid=uuid, rcpts=rcpts))


def tokens_by_rcpt(client: SyncRedis, uuid: str) -> dict[str, str]:
    out = {}
    for raw in client.lrange(OUT, 0, -1):
        item = stored_item(raw)
        if item.uuid == uuid:
            (token,) = re.findall(
                rb"<https://mail\.example\.com/v1/unsubscribe/([^>]+)>", item.payload
            )
            out[item.header["rcpts"][0]] = token.decode()
    return out


def events(client: SyncRedis, kind: str) -> list[dict[str, Any]]:
    found = [json.loads(stored_item(r).payload) for r in client.lrange(EVENTS, 0, -1)]
    return [e for e in found if e["event"] == kind]


def entry(client: SyncRedis, domain: str, address: str) -> s.Entry | None:
    raw = client.hget(s.bucket_key(domain, address), address)
    assert raw is None or isinstance(raw, bytes)
    return None if raw is None else s.unpack(raw)


def test_each_recipient_unsubscribes_and_is_suppressed(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    http, transformer = services(tmp_path, redis_server.port)
    with running(transformer), running(http):
        enqueue(queues, UUID, [ANN, BOB])
        wait_for(lambda: queues.llen(OUT) == 2, what="two copies")
        tokens = tokens_by_rcpt(queues, UUID)
        assert set(tokens) == {ANN, BOB} and tokens[ANN] != tokens[BOB]
        for token in tokens.values():
            assert request(http, "POST", f"/v1/unsubscribe/{token}")[0] == 200
        # The provider POSTs again: no second event for either.
        for token in tokens.values():
            assert request(http, "POST", f"/v1/unsubscribe/{token}")[0] == 200
        assert http.metric("httpreceiver_unsubscribe_total", 'result="ok"') == 2
        assert http.metric("httpreceiver_unsubscribe_total", 'result="repeated"') == 2
        assert (
            http.metric("suppression_writes_total", 'reason="unsubscribe",source="httpreceiver"')
            == 2
        )
        unsubscribes = events(queues, "unsubscribe")
        assert sorted(e["rcpt"] for e in unsubscribes) == ["ann@example.org", "bob@example.org"]
        assert {e["uuid"] for e in unsubscribes} == {UUID}
        for address in ("ann@example.org", "bob@example.org"):
            found = entry(queues, "example.com", address)
            assert found is not None and found.reason == "unsubscribe" and found.uuid == UUID
            assert found.source == next(e["id"] for e in unsubscribes if e["rcpt"] == address)[:16]
        assert queues.hget(keyspace.current().suppression_size(), "example.com") == b"2"
        # The next message to both and Carol reaches Carol only.
        queues.delete(OUT)
        enqueue(queues, "second1", [ANN, BOB, CAROL])
        wait_for(lambda: len(events(queues, "suppressed")) == 2, what="two suppressed events")
        wait_for(lambda: queues.llen(OUT) == 1, what="Carol's copy")
    (left,) = [stored_item(r) for r in queues.lrange(OUT, 0, -1)]
    assert left.header["rcpts"] == [CAROL]


def test_swapped_recipient_expired_and_per_message_tokens(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    secret = UNSUB_SECRET.encode()
    http, _ = services(
        tmp_path, redis_server.port, **{"httpreceiver__unsubscribe-token-max-age-days": 30}
    )
    now = int(time.time())
    ann = make_token(secret, UUID, None, now, rcpt=ANN, domain="example.com")
    payload, _, mac = ann.partition(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    swapped = base64.urlsafe_b64encode(raw.replace(b"ann@", b"bob@")).rstrip(b"=").decode()
    old = make_token(secret, UUID, None, now - 31 * 86400, rcpt=ANN, domain="example.com")
    legacy = make_message_token(secret, "legacy2", issued=now)
    with running(http):
        assert request(http, "POST", f"/v1/unsubscribe/{swapped}.{mac}")[0] == 404
        assert request(http, "GET", f"/v1/unsubscribe/{swapped}.{mac}")[0] == 404
        status, text = request(http, "POST", f"/v1/unsubscribe/{old}")
        assert status == 410 and json.loads(text)["reason"] == "expired"
        assert request(http, "GET", f"/v1/unsubscribe/{old}", "text/html")[0] == 410
        assert queues.llen(EVENTS) == 0 and not queues.exists(keyspace.current().suppression_size())
        # A token from before recipients were named: a per-message event, no entry.
        assert request(http, "POST", f"/v1/unsubscribe/{legacy}")[0] == 200
        assert request(http, "POST", f"/v1/unsubscribe/{ann}")[0] == 200
    by_uuid = {e["uuid"]: e for e in events(queues, "unsubscribe")}
    assert "rcpt" not in by_uuid["legacy2"] and by_uuid[UUID]["rcpt"] == ANN
    assert queues.exists("unsubscribed:legacy2") and not queues.exists(f"unsubscribed:{UUID}")
    assert queues.hgetall(keyspace.current().suppression_size()) == {b"example.com": b"1"}
