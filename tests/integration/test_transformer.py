"""The Transformer as a real process against a real Redis: P0 before P1, atomic hand-over
to the Postfix queue, poison to the dead-letter list with an error event."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis

from manycore_common import feedbacktag, keyspace
from manycore_common import item as item_format
from manycore_common.queue import ReliableQueue
from manycore_transformer import dkim
from manycore_transformer.service import TARGET_SIZE_SECONDS, HighWater
from manycore_transformer.streams import StreamRegistry
from tests.dkimcheck import dkimpy_results
from tests.helpers import (
    FEEDBACK_SECRET,
    RedisServer,
    Service,
    rsa_pem,
    running,
    stored_item,
    wait_for,
    write_configs,
    write_dkim_keys,
)
from tests.integration.conftest import build_message, set_path

P0, P1, OUT, EVENTS = "IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1", "INCOMING-TO-POSTFIX", "EVENT_QUEUE"


def transformer_service(directory: Path, redis_port: int, **changes: Any) -> Service:
    def change(customer: dict[str, Any]) -> None:
        for path, value in changes.items():
            set_path(customer, path.replace("__", "."), value)

    global_file, customer_file = write_configs(directory, redis_port, change)
    write_dkim_keys(directory)
    return Service("transformer", global_file, customer_file, directory / "transformer.log")


KEYS = [FEEDBACK_SECRET.encode()]


def enqueue(
    client: SyncRedis,
    queue: str,
    data: bytes,
    uuid: str,
    rcpts: list[str] | None = None,
    stream_id: str | None = None,
) -> None:
    item = item_format.new_item(
        data, source="test", uuid=uuid, stream_id=stream_id, rcpts=rcpts or ["alice@example.net"]
    )
    client.lpush(queue, item)


def tag_of(item: item_format.Item) -> feedbacktag.Tag:
    """The verified tag of an output item's return path, which its message carries too."""
    return_path = item.header["return_path"]
    assert f"\r\nX-ReturnPathIb: {return_path}\r\n".encode() in item.payload
    tag = feedbacktag.read_address(KEYS, return_path, ["bounce.example.com"])
    assert tag is not None and tag.kind == "bounce" and tag.uuid == item.uuid
    (message_id,) = re.findall(rb"\r\nMessage-ID: <([^>]+)>\r\n", item.payload)
    mid = feedbacktag.read_address(
        KEYS, message_id.decode(), ["bounce.example.com"], frozenset({"message"})
    )
    assert mid is not None and mid.uuid == item.uuid and mid.fingerprint == tag.fingerprint
    return tag


def out_items(client: SyncRedis) -> list[item_format.Item]:
    # LPUSH puts the newest on the left: reverse for arrival order.
    return [stored_item(raw) for raw in reversed(client.lrange(OUT, 0, -1))]


def records() -> dict[str, str]:
    return {"mailer._domainkey.example.com": dkim.load_key(rsa_pem(label="ex")).public_record()}


@pytest.mark.parametrize("workers", [1, 2])
def test_p0_before_p1_and_signed_hand_over(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis, workers: int
) -> None:
    for i in range(5):
        enqueue(queues, P1, build_message(f"low{i}"), f"low{i}")
    for i in range(5):
        enqueue(queues, P0, build_message(f"high{i}", "0"), f"high{i}")
    service = transformer_service(
        tmp_path,
        redis_server.port,
        **{"transformer__workers": workers, "transformer__batch-size": 2},
    )
    with running(service):
        wait_for(lambda: queues.llen(OUT) == 10, what="all ten handed over")
        assert service.metric("transformer_polled_primary_total") == 5
        assert service.metric("transformer_polled_default_total") == 5
        assert service.metric("transformer_pushed_total") == 10
    got = out_items(queues)
    if workers == 1:
        # One loop: every P0 message before any P1 message.
        assert [i.uuid for i in got][:5] == [f"high{n}" for n in range(5)]
    assert sorted(i.uuid or "" for i in got) == sorted(
        [f"high{n}" for n in range(5)] + [f"low{n}" for n in range(5)]
    )
    for item in got:
        assert item.header["rcpts"] == ["alice@example.net"]
        assert tag_of(item).names("alice@example.net")
        assert item.header["from_domain"] == "example.com"
        assert item.header["source"] == "transformer" and item.attempts == 0
        assert dkimpy_results(item.payload, records()) == [True]
        assert b"\r\nX-Uuid:" not in item.payload
    for queue in (P0, P1):
        assert queues.llen(queue) == 0
        assert not queues.keys(f"{{{queue}}}:processing:*") or all(
            queues.llen(k) == 0 for k in queues.keys(f"{{{queue}}}:processing:*")
        )


def test_p1_is_not_starved(tmp_path: Path, redis_server: RedisServer, queues: SyncRedis) -> None:
    for i in range(30):
        enqueue(queues, P0, build_message(f"high{i}", "0"), f"high{i}")
    enqueue(queues, P1, build_message("low0"), "low0")
    service = transformer_service(
        tmp_path,
        redis_server.port,
        **{"transformer__batch-size": 1, "transformer__primary-per-default": 10},
    )
    with running(service):
        wait_for(lambda: queues.llen(OUT) == 31, what="all handed over")
    order = [i.uuid for i in out_items(queues)]
    assert order.index("low0") <= 11


def test_unknown_domain_goes_to_dead_letters_with_an_error_event(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    enqueue(queues, P1, build_message("lost1", sender="news@unknown.example"), "lost1")
    enqueue(queues, P1, build_message("fine1"), "fine1")
    with running(transformer_service(tmp_path, redis_server.port)) as service:
        wait_for(
            lambda: queues.llen(OUT) == 1 and queues.llen(f"{{{P1}}}:dead") == 1,
            what="one handed over, one dead-lettered",
        )
        assert service.metric("transformer_errors_total", 'reason="unknown-domain"') == 1
    dead = stored_item(queues.lrange(f"{{{P1}}}:dead", 0, -1)[0])
    assert dead.uuid == "lost1"
    assert "unknown.example" in (dead.dead_reason or "")
    (raw_event,) = queues.lrange(EVENTS, 0, -1)
    event = json.loads(stored_item(raw_event).payload)
    assert event["event"] == "error" and event["service"] == "transformer"
    assert event["uuid"] == "lost1"
    assert "From domain unknown.example is not configured" in event["msg"]


def test_missing_key_file_stops_the_service_naming_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = transformer_service(tmp_path, redis_server.port)
    (tmp_path / "dkim" / "dkim-private-key-bexample.com.pem").unlink()
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("manycore-transformer")),
            "--global-config-file",
            str(service.global_file),
            "--customer-config-file",
            str(service.customer_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "transformer.domain-settings[1].dkim-private-key-file: cannot read" in result.stderr
    assert "dkim-private-key-bexample.com.pem" in result.stderr


def test_sigterm_releases_nothing_held_and_exits_0(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    service = transformer_service(tmp_path, redis_server.port).start()
    enqueue(queues, P1, build_message("m1"), "m1")
    wait_for(lambda: queues.llen(OUT) == 1, what="handed over")
    assert service.stop(signal.SIGTERM) == 0
    assert queues.zcard(f"{{{P1}}}:consumers") == 0


def test_one_item_per_recipient_in_one_step(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    rcpts = ["alice@example.net", "bob@example.org", "carol@example.org"]
    uuid = "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c"
    enqueue(queues, P1, build_message(uuid, stream_id="spring-sale"), uuid, rcpts, "spring-sale")
    enqueue(queues, P1, build_message("solo1", stream_id="spring-sale"), "solo1")
    with running(transformer_service(tmp_path, redis_server.port)) as service:
        wait_for(lambda: queues.llen(OUT) == 4, what="four copies handed over")
        assert service.metric("transformer_pushed_total") == 2
        assert service.metric("transformer_pushed_copies_total") == 4
    copies = [i for i in out_items(queues) if i.uuid == uuid]
    assert sorted(r for i in copies for r in i.header["rcpts"]) == rcpts
    assert len({i.id for i in out_items(queues)}) == 4
    for item in copies:
        (rcpt,) = item.header["rcpts"]
        tag = tag_of(item)
        assert tag.names(rcpt) and not any(tag.names(r) for r in rcpts if r != rcpt)
        assert item.stream_id == "spring-sale" and item.header["from_domain"] == "example.com"
        assert item.header["source"] == "transformer" and item.attempts == 0
        assert dkimpy_results(item.payload, records()) == [True]
        (unsub,) = [
            line for line in item.payload.split(b"\r\n") if line.startswith(b"List-Unsubscribe:")
        ]
        address = unsub.decode().split("<mailto:", 1)[1].split(">", 1)[0]
        unsub_tag = feedbacktag.read_address(KEYS, address, ["bounce.example.com"])
        assert unsub_tag is not None and unsub_tag.kind == "unsub" and unsub_tag.names(rcpt)
    # The stream registry names the stream for MxServer: one field, however many messages.
    field = feedbacktag.stream_field("spring-sale")
    assert queues.hgetall(keyspace.current().feedback_streams()) == {field.encode(): b"spring-sale"}
    assert tag_of(copies[0]).stream_field == field
    assert queues.llen(P1) == 0 and all(queues.llen(k) == 0 for k in queues.keys(f"{P1}:proc*"))


def test_old_unsubscribe_template_is_upgraded_with_a_warning(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    old = {"List-Unsubscribe": "<mailto:unsub-{{uuid}}@{{return-path-domain}}>"}
    service = transformer_service(
        tmp_path, redis_server.port, **{"transformer__email-headers__inject": old}
    )
    enqueue(queues, P1, build_message("legacy1"), "legacy1")
    with running(service):
        wait_for(lambda: queues.llen(OUT) == 1, what="handed over")
        assert (
            service.metric("transformer_warnings_total", 'reason="legacy-unsubscribe-address"') == 1
        )
    (item,) = out_items(queues)
    assert b"unsub-legacy1@" not in item.payload
    assert b"List-Unsubscribe: <mailto:ulegacy1." in item.payload
    assert "is read as {{unsubscribe-address}}" in service.log.read_text()


def test_no_feedback_secret_stops_the_service_naming_the_key(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = transformer_service(
        tmp_path, redis_server.port, **{"common-config": {"unsubscribe-secret": "x" * 32}}
    )
    result = service.run_to_exit()
    assert result.returncode == 2
    assert "common-config.feedback-secret: required by the transformer" in result.stderr


async def test_stream_registry_writes_each_stream_once_and_reports_clashes(
    redis: AsyncRedis,
) -> None:
    registry = StreamRegistry(redis, capacity=2)
    field = feedbacktag.stream_field
    await redis.hset(keyspace.current().feedback_streams(), field("s2"), "another-stream-same-hash")
    assert await registry.ensure(["s1", None, "s2", "s1"]) == ["s2"]
    assert await redis.hgetall(keyspace.current().feedback_streams()) == {
        field("s1").encode(): b"s1",
        field("s2").encode(): b"s2",
    }
    # Known streams cost no command: a field deleted behind its back stays deleted...
    await redis.hdel(keyspace.current().feedback_streams(), field("s1"))
    assert await registry.ensure(["s1"]) == []
    assert not await redis.hexists(keyspace.current().feedback_streams(), field("s1"))
    # ...until the LRU has forgotten it (s1 was used last, so s2 goes first).
    await registry.ensure(["s3"])
    assert registry.unknown(["s1", "s2", "s3"]) == {field("s2"): "s2"}
    await registry.ensure(["s4", "s5"])
    assert registry.unknown(["s1"]) == {field("s1"): "s1"}


async def test_high_water_reads_the_postfix_queue_only_when_it_may_matter(
    redis: AsyncRedis,
) -> None:
    """Below the mark the length read once stands, with our own pushes added, for half a
    second; reaching the mark with our pushes, or a stale read, reads it again."""
    target = ReliableQueue(redis, OUT, high_water_mark=4)
    clock = [100.0]
    check = HighWater(target, clock=lambda: clock[0])
    assert await check.below()
    await redis.lpush(OUT, b"a", b"b", b"c")
    check.pushed(3)
    assert await check.below()  # 3 < 4 without a read
    await redis.lpush(OUT, b"d", b"e")  # another pod's push: unseen until the read is stale
    assert await check.below()
    clock[0] += TARGET_SIZE_SECONDS
    assert not await check.below()  # read again: 5
    await redis.delete(OUT)
    assert await check.below()  # over the mark it reads every time
    await redis.lpush(OUT, b"a", b"b", b"c", b"d")
    check.pushed(4)
    assert not await check.below()
