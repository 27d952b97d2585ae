"""The suppression purge CronJob's own command line (read from deploy/base), run as a real
process against a real Redis: it removes the expired entries and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from redis.asyncio import Redis

from manycore_common import suppression as s
from manycore_common.suppressionstore import Op, SuppressionStore
from tests.helpers import RedisServer, write_configs

JOB = Path(__file__).resolve().parents[2] / "deploy" / "base" / "suppression-purge.yaml"


def job_command() -> list[str]:
    job = yaml.safe_load(JOB.read_text())
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return list(container["command"]) + list(container.get("args", []))


async def test_the_cronjobs_command_purges_expired_entries(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    await redis.flushall()
    now = time.time()
    store = SuppressionStore(redis)
    old = s.new_entry("hard-bounce", now - 10 * 86400, 1)
    await store.add([Op("shop.example", f"gone{i}@x.org", old) for i in range(50)])
    await store.add([Op("shop.example", "kept@x.org", s.new_entry("unsubscribe", now, 0))])
    global_file, customer_file = write_configs(tmp_path, redis_server.port)
    script, *args = job_command()
    # The image's /opt/venv/bin is this virtualenv's bin here.
    local = str(Path(sys.executable).parent / Path(script).name)
    config = [
        "--global-config-file",
        str(global_file),
        "--customer-config-file",
        str(customer_file),
    ]
    done = subprocess.run(
        [local, *config, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"shop.example": 50}
    assert await store.scopes() == {"shop.example": 1}
    [hit] = await store.lookup([("shop.example", "kept@x.org")], now)
    assert hit is not None
