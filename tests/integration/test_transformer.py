"""The Transformer as a real process against a real Redis: P0 before P1, atomic hand-over
to the Postfix queue, poison to the dead-letter list with an error event."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common import item as item_format
from manycore_transformer import dkim
from tests.dkimcheck import dkimpy_results
from tests.helpers import (
    RedisServer,
    Service,
    rsa_pem,
    running,
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


def enqueue(client: SyncRedis, queue: str, data: bytes, uuid: str) -> None:
    client.lpush(
        queue, item_format.new_item(data, source="test", uuid=uuid, rcpts=["alice@example.net"])
    )


def out_items(client: SyncRedis) -> list[item_format.Item]:
    # LPUSH puts the newest on the left: reverse for arrival order.
    return [item_format.decode(raw) for raw in reversed(client.lrange(OUT, 0, -1))]


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
        assert item.header["return_path"] == f"bounce-{item.uuid}@bounce.example.com"
        assert item.header["from_domain"] == "example.com"
        assert item.header["source"] == "transformer" and item.attempts == 0
        assert dkimpy_results(item.payload, records()) == [True]
        assert b"\r\nX-Uuid:" not in item.payload
    for queue in (P0, P1):
        assert queues.llen(queue) == 0
        assert not queues.keys(f"{queue}:processing:*") or all(
            queues.llen(k) == 0 for k in queues.keys(f"{queue}:processing:*")
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
            lambda: queues.llen(OUT) == 1 and queues.llen(f"{P1}:dead") == 1,
            what="one handed over, one dead-lettered",
        )
        assert service.metric("transformer_errors_total", 'reason="unknown-domain"') == 1
    dead = item_format.decode(queues.lrange(f"{P1}:dead", 0, -1)[0])
    assert dead.uuid == "lost1"
    assert "unknown.example" in (dead.dead_reason or "")
    (raw_event,) = queues.lrange(EVENTS, 0, -1)
    event = json.loads(item_format.decode(raw_event).payload)
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
    assert queues.zcard(f"{P1}:consumers") == 0
