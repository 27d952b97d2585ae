"""The Redis pod: redis-server run by manycore-redis with a password and AOF, backups to a
local S3 endpoint (moto's server on loopback) and restore, and the queue exporter."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from manycore_common import item as item_format
from manycore_common.queue import ReliableQueue
from manycore_redis import service as redis_service
from tests.helpers import LOOPBACK, free_port, port_open, wait_for, write_configs
from tests.integration.conftest import set_path

PASSWORD = "test-only-password-0123456789"
NO_RETRY = Retry(NoBackoff(), 0)
BUCKET = "manycore-test"
AWS_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a loopback port; yields its endpoint URL."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", LOOPBACK, "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **AWS_ENV},
    )
    try:
        wait_for(lambda: port_open(port), timeout=30, what="moto_server")
        endpoint = f"http://{LOOPBACK}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


class RedisPod:
    """manycore-redis as a process, with its own data directory."""

    def __init__(self, directory: Path, endpoint: str | None, **changes: Any) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.port = free_port()
        self.metrics_port = free_port()
        (directory / "redis-password").parent.mkdir(parents=True, exist_ok=True)
        (directory / "redis-password").write_text(PASSWORD + "\n")

        def change(customer: dict[str, Any]) -> None:
            customer["redis"] = {
                "server": {
                    "bind": LOOPBACK,
                    "port": self.port,
                    "data-dir": str(self.data_dir),
                    "password-file": "redis-password",
                    "backup-interval-seconds": 0,
                    "backups-kept": 3,
                },
                "reliable-queue": {
                    "redis": {
                        "hostname": LOOPBACK,
                        "port": self.port,
                        "username": "manycore",
                        "password-file": "redis-password",
                    }
                },
                "prometheus": {"inet-interface": LOOPBACK, "inet-port": self.metrics_port},
                "poll-seconds": 0.2,
            }
            if endpoint:
                customer["common-config"] = {
                    "object-storage": {
                        "type": "s3",
                        "bucket": BUCKET,
                        "region": "us-east-1",
                        "endpoint-url": endpoint,
                        "access-key-id": "testing",
                        "secret-access-key": "testing",
                        "prefix": "pod",
                    }
                }
            for path, value in changes.items():
                set_path(customer, path.replace("__", "."), value)

        self.global_file, self.customer_file = write_configs(directory, 1, change)
        self.log = directory / "redis-pod.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisPod:
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("manycore-redis")),
                "--global-config-file",
                str(self.global_file),
                "--customer-config-file",
                str(self.customer_file),
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV},
        )
        wait_for(
            lambda: self.process.poll() is not None or port_open(self.metrics_port),  # type: ignore[union-attr]
            timeout=60,
            what="manycore-redis",
        )
        assert self.process.poll() is None, self.log.read_text()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(120)

    def client(self, **kwargs: Any) -> SyncRedis:
        args: dict[str, Any] = {"username": "manycore", "password": PASSWORD, "retry": NO_RETRY}
        args.update(kwargs)
        return SyncRedis(host=LOOPBACK, port=self.port, **args)

    def metrics(self) -> dict[str, float]:
        import urllib.request

        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.metrics_port}/metrics") as r:
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out


def push(client: SyncRedis, queue: str, n: int, start: int = 0) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.lpush(queue, item_format.new_item(b"x" * 200, source="test", uuid=f"u{i}"))
    pipe.execute()


async def test_start_adopts_processing_lists_an_older_version_left(redis: AsyncRedis) -> None:
    """Lists made before the queues' registry existed are registered once at start, so the
    reaper and the gauges see them; other keys are left alone."""
    await redis.lpush("INCOMING-TO-POSTFIX:processing:old", b"x", b"y")
    await redis.set("unrelated", b"1")
    queue = ReliableQueue(redis, "INCOMING-TO-POSTFIX")
    assert await queue.processing_size() == 0
    await redis_service._adopt(redis, ["INCOMING-TO-POSTFIX", "EVENT_QUEUE"], asyncio.Event())
    assert await queue.processing_size() == 2
    # Under the previous release's names: its registry, which the reaper still reads.
    assert await redis.zrange(queue.legacy["holders"], 0, -1) == [b"old"]


def test_password_required_and_dangerous_commands_denied(tmp_path: Path) -> None:
    pod = RedisPod(tmp_path, None).start()
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            SyncRedis(host=LOOPBACK, port=pod.port, retry=NO_RETRY).ping()
        with pytest.raises((AuthenticationError, ResponseError)):
            pod.client(password="wrong").ping()
        app = pod.client()
        assert app.ping()
        for command in (
            ("FLUSHALL",),
            ("CONFIG", "GET", "dir"),
            ("KEYS", "*"),
            ("SHUTDOWN",),
            ("ACL", "LIST"),
        ):
            with pytest.raises(NoPermissionError):
                app.execute_command(*command)  # type: ignore[no-untyped-call]
        assert "used_memory" in app.info("memory")
        app.close()
    finally:
        assert pod.stop() == 0
    assert PASSWORD not in pod.log.read_text()


def test_exporter_reports_readme_gauges_and_pod_exits_when_redis_dies(tmp_path: Path) -> None:
    pod = RedisPod(tmp_path, None, redis__server__maxmemory="64mb").start()
    app = pod.client()
    try:
        push(app, "IB-MAIL-QUEUE-P0", 3)
        push(app, "IB-MAIL-QUEUE-P1", 5)
        push(app, "EVENT_QUEUE", 2)
        push(app, "INCOMING-TO-POSTFIX", 1)
        app.lpush("{IB-MAIL-QUEUE-P1}:dead", b'{"v":1}\nx')
        # Two items a consumer holds: found through the registry of holders, not a SCAN.
        app.zadd("{EVENT_QUEUE}:holders", {"c1": 0})
        app.lpush("{EVENT_QUEUE}:processing:c1", b"held 1", b"held 2")
        # One reading taken after every push: the exporter reads the queues one by one, so a
        # reading that began between two pushes may show some and not others.
        expected = {
            "primary_queue_messages": 3,
            "default_queue_messages": 5,
            "event_queue_messages": 2,
            "queue_to_postfix_messages": 1,
            'redis_queue_dead_messages{queue="IB-MAIL-QUEUE-P1"}': 1,
            'redis_queue_processing_messages{queue="EVENT_QUEUE"}': 2,
        }
        wait_for(
            lambda: all(pod.metrics().get(k) == v for k, v in expected.items()),
            what="a reading after every push",
        )
        m = pod.metrics()
        assert m["redis_up"] == 1
        assert m["primary_queue_messages"] == 3
        assert m["default_queue_messages"] == 5
        assert m["event_queue_messages"] == 2
        assert m["queue_to_postfix_messages"] == 1
        assert m['redis_queue_dead_messages{queue="IB-MAIL-QUEUE-P1"}'] == 1
        assert 0 <= m['redis_queue_oldest_age_seconds{queue="IB-MAIL-QUEUE-P1"}'] < 60
        assert m["redis_used_memory_bytes"] > 0
        assert m["redis_maxmemory_bytes"] == 64 * 1024 * 1024
        # redis-server dies under the exporter: it says so, and claims no queue sizes.
        os.kill(_redis_pid(pod), signal.SIGKILL)
        wait_for(lambda: pod.process.poll() is not None, what="manycore-redis to notice")  # type: ignore[union-attr]
        assert pod.process.returncode == 1  # type: ignore[union-attr]
    finally:
        app.close()
        if pod.process and pod.process.poll() is None:
            pod.stop()


def _redis_pid(pod: RedisPod) -> int:
    client = pod.client()
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_exporter_only_mode_reports_up_0(tmp_path: Path) -> None:
    """Without a server section it only exports; with Redis unreachable: redis_up 0 and no
    queue gauges at all (no fake zeros)."""
    pod = RedisPod(tmp_path, None)
    customer = pod.customer_file.read_text()
    import yaml

    data = yaml.safe_load(customer)
    del data["redis"]["server"]
    data["redis"]["reliable-queue"]["redis"]["port"] = free_port()  # nothing listens there
    pod.customer_file.write_text(yaml.safe_dump(data))
    pod.start()
    try:
        wait_for(lambda: "redis_up" in pod.metrics(), what="metrics")
        m = pod.metrics()
        assert m["redis_up"] == 0
        assert "default_queue_messages" not in m
    finally:
        assert pod.stop() == 0


def test_backup_on_stop_and_restore_into_an_empty_data_dir(tmp_path: Path, s3: str) -> None:
    pod = RedisPod(tmp_path, s3).start()
    app = pod.client()
    push(app, "IB-MAIL-QUEUE-P1", 10_000)
    app.close()
    assert pod.stop() == 0
    assert '"msg": "backup uploaded"' in pod.log.read_text()

    shutil.rmtree(pod.data_dir)
    pod.start()
    app = pod.client()
    try:
        assert app.llen("IB-MAIL-QUEUE-P1") == 10_000
        push(app, "IB-MAIL-QUEUE-P1", 5, start=10_000)
    finally:
        app.close()
        assert pod.stop() == 0
    assert '"msg": "restored backup"' in pod.log.read_text()

    # Data present: a start restores nothing over it (the newest data wins).
    pod.start()
    app = pod.client()
    try:
        assert app.llen("IB-MAIL-QUEUE-P1") == 10_005
    finally:
        app.close()
        assert pod.stop() == 0
    assert pod.log.read_text().count('"msg": "restored backup"') == 1
    assert "data directory not empty: not restoring" in pod.log.read_text()


def test_corrupt_newest_backup_falls_back_to_an_older_one(tmp_path: Path, s3: str) -> None:
    import boto3

    pod = RedisPod(tmp_path, s3, **{"common-config__object-storage__prefix": "corrupt"}).start()
    app = pod.client()
    push(app, "Q", 100)
    app.close()
    assert pod.stop() == 0
    time.sleep(0.01)
    pod.start()
    app = pod.client()
    push(app, "Q", 50, start=100)
    app.close()
    assert pod.stop() == 0

    s3c = boto3.client(
        "s3",
        endpoint_url=s3,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = sorted(
        o["Key"] for o in s3c.list_objects_v2(Bucket=BUCKET, Prefix="corrupt/backups/")["Contents"]
    )
    assert len(keys) == 2
    newest = keys[-1]
    head = s3c.head_object(Bucket=BUCKET, Key=newest)
    s3c.put_object(Bucket=BUCKET, Key=newest, Body=b"garbage", Metadata=head["Metadata"])

    shutil.rmtree(pod.data_dir)
    pod.start()
    app = pod.client()
    try:
        assert app.llen("Q") == 100  # the older, intact backup
    finally:
        app.close()
        assert pod.stop() == 0
    log = pod.log.read_text()
    assert "backup is corrupt (checksum mismatch)" in log
    # Nothing was deleted by the restore.
    assert len(s3c.list_objects_v2(Bucket=BUCKET, Prefix="corrupt/backups/")["Contents"]) >= 2


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_kill_9_loses_no_acknowledged_push(tmp_path: Path, fsync: str) -> None:
    """Every push Redis acknowledged survives kill -9 of redis-server and its supervisor. (With
    everysec, the documented bound is for a crash of the whole machine: up to ~1 s of writes
    that were still in the page cache; a killed process loses none.)"""
    pod = RedisPod(tmp_path, None, **{"redis__server__appendfsync": fsync}).start()
    app = pod.client()
    acknowledged = 0
    for i in range(1000):
        app.lpush("Q", f"item-{i}")
        acknowledged += 1
    # Writes made by Lua scripts (how the queue works) are logged as MULTI/EXEC blocks and
    # must replay too (they did not while the default user was switched off).
    script = app.register_script(
        "redis.call('LPUSH', KEYS[1], ARGV[1]) redis.call('INCR', KEYS[2]) return 1"
    )
    for i in range(1000):
        script(keys=["Q", "scripted"], args=[f"scripted-{i}"])
        acknowledged += 1
    redis_pid = _redis_pid(pod)
    os.kill(redis_pid, signal.SIGKILL)
    pod.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    pod.process.wait(10)  # type: ignore[union-attr]
    app.close()
    pod.start()
    app = pod.client()
    try:
        assert app.llen("Q") == acknowledged
        assert int(app.get("scripted") or 0) == 1000
    finally:
        app.close()
        pod.stop()
