"""manycore-redis as primary, replica and sentinel (issue 17, item 3): the replica replicates
with its own ACL user, the sentinel watches with its own, a killed primary is replaced, and
the old primary's pod, restarted, asks the sentinel and joins as a replica (it restores no
backup and does not split the set in two); only the primary's pod reports the queue gauges.
Both with the older shared user and with one ACL user per service (issue 18)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.exceptions import ResponseError

from tests.helpers import LOOPBACK, free_port, wait_for
from tests.integration.test_redis_module import NO_RETRY, RedisPod

NAME = "manycore"
#: Per service (issue 18): the pods' users, all with the test password (its file).
USERS = {
    "receiver": {"username": "mc-receiver", "password-file": "redis-password"},
    "exporter": {"username": "mc-exporter", "password-file": "redis-password"},
}
#: (username that writes, username that reads, the key) in each form.
FORMS = {
    "shared": ("manycore", "manycore", "Q"),
    "per-service": ("mc-receiver", "mc-exporter", "IB-MAIL-QUEUE-P0"),
}


def sentinel_form(sentinel_port: int, form: str = "shared") -> dict[str, Any]:
    return {
        "sentinels": [{"hostname": LOOPBACK, "port": sentinel_port}],
        "master-name": NAME,
        "username": FORMS[form][1],
        "password-file": "redis-password",
    }


def data_pod(directory: Path, sentinel_port: int, form: str = "shared", **server: Any) -> RedisPod:
    changes = {f"redis__server__{key.replace('_', '-')}": v for key, v in server.items()}
    if form == "per-service":
        changes["redis__server__users"] = USERS
    return RedisPod(
        directory,
        None,
        **{"redis__reliable-queue__redis": sentinel_form(sentinel_port, form)},
        **{"redis__server__announce-hostname": LOOPBACK, "redis__server__min-replicas-to-write": 1},
        **changes,
    )


def role(pod: RedisPod, username: str = "manycore") -> str:
    client = pod.client(username=username)
    try:
        return str(client.info("replication")["role"])
    finally:
        client.close()


def named_primary(sentinel_port: int) -> int | None:
    client = SyncRedis(host=LOOPBACK, port=sentinel_port, retry=NO_RETRY)
    try:
        answer = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return int(answer[1]) if answer else None


# The older shared user only in the long suite (make chaos): 30 s each, and the shared
# user's rules are the per-service ones' superset (tests/integration/test_redis_acl.py).
@pytest.mark.parametrize(
    "form", list(FORMS) if os.environ.get("MANYCORE_CHAOS") else ["per-service"]
)
def test_primary_replica_sentinel_and_a_returning_primary(tmp_path: Path, form: str) -> None:
    writer, reader, key = FORMS[form]
    sentinel_port = free_port()
    first = data_pod(tmp_path / "a", sentinel_port, form)
    second = data_pod(
        tmp_path / "b",
        sentinel_port,
        form,
        role="replica",
        primary={"hostname": LOOPBACK, "port": first.port},
    )
    sentinel = RedisPod(
        tmp_path / "s",
        None,
        **{
            "redis__reliable-queue__redis": sentinel_form(sentinel_port, form),
            "redis__server__port": sentinel_port,
            "redis__server__role": "sentinel",
            "redis__server__primary": {"hostname": LOOPBACK, "port": first.port},
            "redis__server__quorum": 1,
            "redis__server__down-after-milliseconds": 1000,
            "redis__server__failover-timeout-milliseconds": 3000,
        },
    )
    pods = [first.start(), second.start(), sentinel]
    try:
        app = first.client(username=writer)
        # min-replicas-to-write 1: the primary takes writes once its replica is there.
        wait_for(lambda: _push_ok(app, key, b"before the failover"), what="the replica to connect")
        wait_for(lambda: _held(second, reader, key) == [b"before the failover"],
                 what="the replica to have the push")  # fmt: skip
        assert role(second, reader) == "slave"
        sentinel.start()
        assert named_primary(sentinel_port) == first.port
        # The sentinel logs in to the data nodes as its own user and finds the replica.
        wait_for(lambda: _replicas_seen(sentinel_port) == 1, what="the sentinel to see the replica")
        os.kill(_redis_pid(first, reader), signal.SIGKILL)
        wait_for(lambda: named_primary(sentinel_port) == second.port, timeout=20, what="failover")
        assert first.process is not None
        first.process.wait(20)
        # The first pod comes back with the same config (role primary): it joins as a replica.
        pods[0] = first = first.start()
        wait_for(
            lambda: role(first, reader) == "slave", timeout=20, what="the old primary to replicate"
        )
        promoted = second.client(username=writer)
        wait_for(lambda: _push_ok(promoted, key), timeout=20, what="writes once a replica is back")
        wait_for(lambda: _held(first, reader, key)[-1:] == [b"before the failover"],
                 what="the returning node to hold the data")  # fmt: skip
        assert named_primary(sentinel_port) == second.port
        # Both pods read the primary; only the primary's pod reports the queue gauges.
        wait_for(lambda: _reports_queues(second) and not _reports_queues(first),
                 what="only the primary's pod to report")  # fmt: skip
        assert first.metrics()["redis_up"] == 1
    finally:
        for pod in pods:
            if pod.process and pod.process.poll() is None:
                pod.stop()


def _held(pod: RedisPod, username: str, key: str) -> list[bytes]:
    client = pod.client(username=username)
    try:
        return list(client.lrange(key, 0, -1))  # type: ignore[arg-type]
    finally:
        client.close()


def _redis_pid(pod: RedisPod, username: str) -> int:
    client = pod.client(username=username)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _replicas_seen(sentinel_port: int) -> int:
    client = SyncRedis(host=LOOPBACK, port=sentinel_port, retry=NO_RETRY)
    try:
        state = client.sentinel_master(NAME)
        assert isinstance(state, dict), state
        return int(state["num-slaves"])
    finally:
        client.close()


def _push_ok(client: SyncRedis, key: str, value: bytes = b"after the failover") -> bool:
    try:
        client.lpush(key, value)
        return True
    except ResponseError:  # NOREPLICAS until a replica is in sync
        return False


def _reports_queues(pod: RedisPod) -> bool:
    return "primary_queue_messages" in pod.metrics()
