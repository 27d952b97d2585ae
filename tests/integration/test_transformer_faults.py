"""The Transformer as a real process while Redis drops its connections mid-batch.

A Redis error between a take and the hand-over (a restart, a failover, a killed connection)
used to leave the batch in the live Transformer's processing list for good: the reaper only
returns a dead consumer's items, and the worker never took its own back. Seen in the fault
suite (SIGTERM of Redis while mail flowed: one message held, never sent). Now the failed
batch is forgotten and ``recover_strays`` returns it, and the suppression look-up's held
connection sends its read-only script again on a new connection."""

from __future__ import annotations

import contextlib
import os
import signal
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


def pool_children(pid: int) -> list[int]:
    """The Transformer's signing processes (its children, spawned at its first batch)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    found: list[int] = []
    for task in tasks:
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    # Not the resource tracker, which the spawn context starts too.
    return [c for c in found if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_a_killed_signing_process_stops_the_service_and_loses_nothing(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    """SIGKILL of one of the pool's processes (the OOM killer) breaks the pool for good. The
    loop that meets it used to die unseen: the service stayed up, healthy and idle, with the
    batch in its processing list, where the reaper never looks while it lives. Now it stops
    (exit non-zero, to be restarted), gives the batch back, and a new one sends it."""
    service = transformer_service(tmp_path, redis_server.port, **{"transformer__workers": 2})
    with running(service):
        assert service.process is not None
        enqueue(queues, P1, build_message("first"), "first")
        wait_for(lambda: queues.llen(OUT) == 1, timeout=30, what="the first message")
        children = pool_children(service.process.pid)
        assert children, "no signing process"
        os.kill(children[0], signal.SIGKILL)
        time.sleep(0.5)  # the pool sees its process gone
        enqueue(queues, P1, build_message("second"), "second")
        code = service.process.wait(30)
    assert code != 0
    assert "a transform loop failed; stopping" in service.log.read_text()
    assert queues.llen(OUT) == 1 and queues.llen(P1) == 1, "the batch was not given back"
    with running(service):
        wait_for(lambda: queues.llen(OUT) == 2, timeout=30, what="the second message")
    uuids = sorted(item.uuid or "" for item in out_items(queues))
    assert uuids == ["first", "second"]
    assert queues.llen(f"{{{P1}}}:dead") == 0
