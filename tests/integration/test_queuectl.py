"""The operator command against a real Redis: stats, list and requeue dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from redis.asyncio import Redis

from manycore_common import item as item_format
from manycore_common.queue import ReliableQueue
from tests.helpers import RedisServer, write_configs


def queues_cmd(g: Path, c: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("manycore-queues")),
            "--global-config-file",
            str(g),
            "--customer-config-file",
            str(c),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_stats_dead_and_requeue(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    g, c = write_configs(tmp_path, redis_server.port)
    queue = ReliableQueue(redis, "IB-MAIL-QUEUE-P1", max_attempts=1)
    await queue.push_many([item_format.new_item(b"m", source="t", uuid=f"u{i}") for i in range(3)])
    consumer = queue.consumer("c")
    taken = await consumer.take(timeout=1)
    assert taken is not None
    assert await consumer.retry(taken, "unknown From domain x.org") == "dead"
    await consumer.take(timeout=1)

    stats = queues_cmd(g, c, "--json", "stats")
    assert stats.returncode == 0, stats.stderr
    rows = {r["queue"]: r for r in json.loads(stats.stdout)}
    assert rows["IB-MAIL-QUEUE-P1"] == {
        "queue": "IB-MAIL-QUEUE-P1",
        "waiting": 1,
        "processing": 1,
        "dead": 1,
    }
    assert rows["EVENT_QUEUE"]["waiting"] == 0

    dead = queues_cmd(g, c, "--json", "dead", "IB-MAIL-QUEUE-P1")
    assert dead.returncode == 0
    (letter,) = [json.loads(line) for line in dead.stdout.splitlines()]
    assert letter["uuid"] == "u0" and letter["reason"] == "unknown From domain x.org"
    assert letter["attempts"] == 1

    requeue = queues_cmd(g, c, "requeue", "IB-MAIL-QUEUE-P1")
    assert requeue.stdout.strip() == "requeued 1"
    assert await queue.size() == 2 and await queue.dead_size() == 0

    unknown = queues_cmd(g, c, "dead", "NOPE")
    assert unknown.returncode == 2 and "unknown queue" in unknown.stderr


async def test_adopt_registers_lists_an_older_version_left(
    tmp_path: Path, redis: Redis, redis_server: RedisServer
) -> None:
    g, c = write_configs(tmp_path, redis_server.port)
    await redis.lpush("IB-MAIL-QUEUE-P0:processing:old-1", b"a", b"b")
    await redis.lpush("EVENT_QUEUE:processing:old-2", b"c")

    def processing() -> dict[str, int]:
        stats = queues_cmd(g, c, "--json", "stats")
        assert stats.returncode == 0, stats.stderr
        return {r["queue"]: r["processing"] for r in json.loads(stats.stdout)}

    assert set(processing().values()) == {0}  # stats read the registry: no SCAN
    adopt = queues_cmd(g, c, "--json", "adopt")
    assert adopt.returncode == 0, adopt.stderr
    assert json.loads(adopt.stdout)["IB-MAIL-QUEUE-P0"] == 1
    assert json.loads(adopt.stdout)["EVENT_QUEUE"] == 1
    counts = processing()
    assert counts["IB-MAIL-QUEUE-P0"] == 2 and counts["EVENT_QUEUE"] == 1
    again = queues_cmd(g, c, "--json", "adopt")
    assert set(json.loads(again.stdout).values()) == {0}
