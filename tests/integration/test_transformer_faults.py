"""The Transformer as a real process while Redis drops its connections mid-batch.

A Redis error between a take and the hand-over (a restart, a failover, a killed connection)
used to leave the batch in the live Transformer's processing list for good: the reaper only
returns a dead consumer's items, and the worker never took its own back. Seen in the fault
suite (SIGTERM of Redis while mail flowed: one message held, never sent). Now the failed
batch is forgotten and ``recover_strays`` returns it, and the suppression look-up's held
connection sends its read-only script again on a new connection."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import yaml
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from tests.helpers import RedisServer, running, wait_for
from tests.integration.conftest import build_message
from tests.integration.test_transformer import OUT, P1, enqueue, out_items, transformer_service

MESSAGES = 200


def short_heartbeat(global_file: Path, seconds: float) -> None:
    """Strays are returned after two heartbeats (a third of the timeout each)."""
    data = yaml.safe_load(global_file.read_text())
    data["reliable-queue"]["heartbeat-timeout-seconds"] = seconds
    global_file.write_text(yaml.safe_dump(data))


def kill_connections(client: SyncRedis, stop: threading.Event) -> int:
    """CLIENT KILL every other connection every 20 ms until ``stop``: whatever the
    Transformer is doing, some of its commands lose their connection."""
    kills = 0
    while not stop.is_set():
        with contextlib.suppress(RedisError):
            kills += int(client.client_kill_filter(_type="normal", skipme=True))
        time.sleep(0.02)
    return kills


def test_connections_killed_mid_batch_lose_and_double_nothing(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    for i in range(MESSAGES):
        enqueue(queues, P1, build_message(f"k{i}"), f"k{i}")
    service = transformer_service(tmp_path, redis_server.port, **{"transformer__batch-size": 4})
    short_heartbeat(service.global_file, 3.0)
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.append(kill_connections(queues, stop)))
    with running(service):
        killer.start()
        try:
            wait_for(lambda: queues.llen(OUT) >= MESSAGES // 2, timeout=60, what="half sent")
        finally:
            stop.set()
            killer.join()
        wait_for(
            lambda: (
                queues.llen(OUT) >= MESSAGES
                and not any(queues.llen(k) for k in queues.keys(f"{{{P1}}}:processing:*"))
            ),
            timeout=60,
            what="every message handed over and nothing held",
        )
        time.sleep(1.5)  # a late duplicate would show up here
    assert killed and killed[0] > 0
    uuids = [item.uuid or "" for item in out_items(queues)]
    assert sorted(uuids) == sorted(f"k{i}" for i in range(MESSAGES)), "lost or doubled"
    assert queues.llen(P1) == 0 and queues.llen(f"{{{P1}}}:dead") == 0
