"""Strangers against MxServer's unclassified store: postmaster@ and abuse mail anyone on the
Internet may send must not push out the unclassified mail a verified tag ties to a message we
sent (what an operator reads to improve the rules). Junk goes to its own list with its own
share of the budget; one client address, or one tag copied from a message we sent, gets only
a few messages kept per window. Each client is its own loopback address (127.0.0.N)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common import item as item_format
from tests.helpers import LOOPBACK, RedisServer, Service, wait_for
from tests.hostile.conftest import assert_alive, configured_service
from tests.mxmail import ABUSE, RP, deliver, original_headers, tag

TAGGED = "MXSERVER-UNCLASSIFIED"
UNTAGGED = "MXSERVER-UNCLASSIFIED-UNTAGGED"
ALICE = "alice@receiver.example"
#: max-count 20 with a quarter for untagged mail: 15 tagged, 5 untagged.
MAX_COUNT, KEEP_TAGGED, KEEP_UNTAGGED = 20, 15, 5
PER_CLIENT, PER_UUID = 3, 2


#: This module's MxServer settings, over the hostile suite's (conftest.py, ``mx``).
MX_SETTINGS: dict[str, Any] = {
    "mxserver.unclassified": {
        "max-count": MAX_COUNT,
        "max-bytes": 1024,
        "max-total-bytes": 1024 * 1024,
        "untagged-share": 0.25,
        "untagged-per-client": PER_CLIENT,
        "tagged-per-uuid": PER_UUID,
        "window-seconds": 3600,
    },
}


@pytest.fixture
def queues(redis_client: SyncRedis) -> SyncRedis:
    redis_client.flushall()
    return redis_client


def port(mx: Service) -> int:
    return int(mx.port or 0)


def note(sender: str, to: str, text: str, quoted: str = "") -> bytes:
    """A message no rule reads: a person writing, perhaps quoting one of our messages."""
    body = f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: a question\r\n\r\n{text}\r\n{quoted}"
    return body.encode()


def senders(client: SyncRedis, key: str) -> list[str]:
    raws: list[bytes] = client.lrange(key, 0, -1)  # type: ignore[assignment]
    return [str(item_format.decode(raw).header.get("mail_from")) for raw in raws]


def uuids(client: SyncRedis, key: str) -> list[str | None]:
    raws: list[bytes] = client.lrange(key, 0, -1)  # type: ignore[assignment]
    return [item_format.decode(raw).header.get("uuid") for raw in raws]


def test_a_crowd_of_strangers_cannot_push_out_tagged_mail(mx: Service, queues: SyncRedis) -> None:
    address = tag("keep1", ALICE)
    code, reply = deliver(port(mx), ALICE, [address], note(ALICE, address, "Who are you?"))
    assert code == 250 and b"unclassified" in reply, reply
    assert uuids(queues, TAGGED) == ["keep1"]
    # More untagged messages than the whole budget, each from its own address (a botnet:
    # no per-client cap is reached), to postmaster@ and to the abuse address.
    crowd = [f"junk{n}@spam.example" for n in range(MAX_COUNT + 10)]
    for n, sender in enumerate(crowd):
        rcpt = ABUSE if n % 2 else f"postmaster@{RP}"
        code, reply = deliver(
            port(mx), sender, [rcpt], note(sender, rcpt, "junk"), f"127.0.0.{n + 10}"
        )
        assert code == 250 and b"unclassified" in reply, reply
    assert uuids(queues, TAGGED) == ["keep1"]
    assert senders(queues, UNTAGGED) == crowd[::-1][:KEEP_UNTAGGED]
    assert sum(len(raw) for raw in queues.lrange(UNTAGGED, 0, -1)) < KEEP_UNTAGGED * 4096
    assert_alive(mx)


def test_one_client_gets_only_its_share_of_the_untagged_list(
    mx: Service, queues: SyncRedis
) -> None:
    before = mx.metric("mxserver_unclassified_not_kept_total", 'reason="per-client"')
    for n in range(PER_CLIENT + 5):
        sender = f"flood{n}@spam.example"
        code, _ = deliver(
            port(mx), sender, [f"postmaster@{RP}"], note(sender, RP, "x"), "127.0.0.2"
        )
        assert code == 250
    assert senders(queues, UNTAGGED) == [f"flood{n}@spam.example" for n in (2, 1, 0)]
    after = mx.metric("mxserver_unclassified_not_kept_total", 'reason="per-client"')
    assert after == before + 5
    # Another client still has its share.
    code, _ = deliver(
        port(mx), "x@y.example", [f"postmaster@{RP}"], note("x@y.example", RP, "hi"), "127.0.0.3"
    )
    assert code == 250 and len(senders(queues, UNTAGGED)) == PER_CLIENT + 1


def test_a_copied_tag_fills_at_most_its_share_of_the_tagged_list(
    mx: Service, queues: SyncRedis
) -> None:
    # Mail to postmaster@ that quotes one of our messages is tagged: it concerns mail we sent.
    quoted = original_headers(tag("keep2", ALICE), ALICE)
    code, _ = deliver(port(mx), ALICE, [f"postmaster@{RP}"], note(ALICE, RP, "Why?", quoted))
    assert code == 250 and uuids(queues, TAGGED) == ["keep2"]
    # A stranger holding one tag (anyone we mailed has one) sends it many times, to the
    # tagged address and quoted to postmaster@, from many addresses.
    before = mx.metric("mxserver_unclassified_not_kept_total", 'reason="per-tag"')
    copied = tag("copied", "mallory@evil.example")
    for n in range(10):
        rcpt = copied if n % 2 else f"postmaster@{RP}"
        data = note(
            "m@evil.example", rcpt, "junk", original_headers(copied, "mallory@evil.example")
        )
        code, _ = deliver(port(mx), "m@evil.example", [rcpt], data, f"127.0.1.{n + 10}")
        assert code == 250
    assert uuids(queues, TAGGED) == ["copied"] * PER_UUID + ["keep2"]
    assert queues.llen(UNTAGGED) == 0
    after = mx.metric("mxserver_unclassified_not_kept_total", 'reason="per-tag"')
    assert after == before + 10 - PER_UUID


def test_a_message_refused_for_redis_does_not_use_up_the_senders_share(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    settings = {"mxserver.unclassified.untagged-per-client": 1}
    try:
        with configured_service("mxserver", tmp_path / "cfg", redis.port, settings) as mx:
            data = note("x@y.example", RP, "hello")
            redis.stop()
            wait_for(lambda: mx.readyz()[0] == 503, what="readyz to report redis down")
            code, _ = deliver(port(mx), "x@y.example", [f"postmaster@{RP}"], data)
            assert code == 451  # the sender retries later
            redis = RedisServer(tmp_path / "redis", redis.port).start()
            wait_for(lambda: mx.readyz()[0] == 200, what="readyz to see redis back")
            assert deliver(port(mx), "x@y.example", [f"postmaster@{RP}"], data)[0] == 250
            client = SyncRedis(host=LOOPBACK, port=redis.port)
            try:
                assert client.llen(UNTAGGED) == 1  # the retry is kept: its share was not used
            finally:
                client.close()
    finally:
        redis.stop()
