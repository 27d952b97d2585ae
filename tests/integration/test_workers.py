"""Front doors with ``workers: 2``: one parent process binding the port and serving the
probes and summed metrics, two worker processes accepting on the same socket (workers.py).
Real processes, real Redis, real clients; a worker is pinned down with SIGSTOP so the test
knows which process takes a connection."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from tests.helpers import LOOPBACK, RedisServer, Service, port_open, running, wait_for
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import http_service, post
from tests.integration.test_receiver import receiver_service, send

P1 = "IB-MAIL-QUEUE-P1"


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def pid(service: Service) -> int:
    assert service.process is not None
    return service.process.pid


def workers_of(service: Service, count: int = 2) -> list[int]:
    wait_for(lambda: len(children(pid(service))) == count, 10, what=f"{count} workers")
    return children(pid(service))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) still answers kill(0).
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def counter(service: Service, name: str) -> float:
    _, body = service._get("/metrics")
    match = re.search(rf"^{name} ([0-9.e+]+)$", body.decode(), re.MULTILINE)
    assert match, body.decode()
    return float(match.group(1))


@pytest.fixture
def queues(redis_server: RedisServer) -> Iterator[SyncRedis]:
    client = SyncRedis(host=LOOPBACK, port=redis_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def receiver2(
    tmp_path: Path, redis_server: RedisServer, tls_files: tuple[Path, Path]
) -> Iterator[Service]:
    service = receiver_service(tmp_path, redis_server.port, tls_files, receiver__workers=2)
    with running(service):
        yield service


def test_receiver_workers_share_the_port_and_sum_their_counters(
    receiver2: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    first, second = workers_of(receiver2)
    # Each worker alone in turn: the other is stopped and cannot accept.
    for asleep, uuid in ((second, "wone"), (first, "wtwo")):
        os.kill(asleep, signal.SIGSTOP)
        try:
            code, reply = send(receiver2, client_tls, build_message(uuid))
            assert code == 250, reply
        finally:
            os.kill(asleep, signal.SIGCONT)
    assert queues.llen(P1) == 2
    # Both workers counted one message each; the parent's /metrics adds them up.
    assert counter(receiver2, "nbr_emails_enqueued_total") == 2
    log = receiver2.log.read_text()
    for index, uuid in ((0, "wone"), (1, "wtwo")):
        assert re.search(rf'"worker": {index}, "uuid": "{uuid}"', log), log[-2000:]
    assert receiver2.readyz() == (200, {"status": "ready"})


def test_a_worker_that_dies_is_started_again(
    receiver2: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    first, second = workers_of(receiver2)
    os.kill(second, signal.SIGKILL)
    # The other worker keeps taking mail meanwhile; the port never closed.
    code, reply = send(receiver2, client_tls, build_message("during"))
    assert code == 250, reply
    wait_for(lambda: second not in children(pid(receiver2)), 10, what="the old worker reaped")
    replacement = [p for p in workers_of(receiver2) if p != first]
    assert len(replacement) == 1 and replacement[0] != second
    wait_for(receiver2.ready, 10, what="ready again")
    assert "worker exited: starting it again" in receiver2.log.read_text()
    code, reply = send(receiver2, client_tls, build_message("after"))
    assert code == 250, reply
    assert queues.llen(P1) == 2


def test_sigterm_stops_every_worker_and_frees_the_port(
    receiver2: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    pids = workers_of(receiver2)
    assert receiver2.stop(signal.SIGTERM) == 0
    assert not any(alive(p) for p in pids)
    assert receiver2.port is not None and not port_open(receiver2.port)


def test_workers_stop_when_their_parent_is_killed(
    receiver2: Service, client_tls: ssl.SSLContext
) -> None:
    pids = workers_of(receiver2)
    assert receiver2.process is not None
    receiver2.process.kill()
    receiver2.process.wait(10)
    # Orphans notice the closed pipe, stop listening and exit: nothing holds the port.
    wait_for(lambda: not any(alive(p) for p in pids), 15, what="orphaned workers to exit")
    assert receiver2.port is not None and not port_open(receiver2.port)


def test_http_workers(tmp_path: Path, redis_server: RedisServer, queues: SyncRedis) -> None:
    with running(http_service(tmp_path, redis_server.port, httpreceiver__workers=2)) as api:
        first, second = workers_of(api)
        for asleep, uuid in ((second, "hone"), (first, "htwo")):
            os.kill(asleep, signal.SIGSTOP)
            try:
                status, _, body = post(api, build_message(uuid))
                assert status == 200, body
            finally:
                os.kill(asleep, signal.SIGCONT)
        assert queues.llen(P1) == 2
        assert counter(api, "nbr_emails_enqueued_total") == 2
        assert api.stop(signal.SIGTERM) == 0
        assert not any(alive(p) for p in (first, second))


def test_several_workers_need_the_certificate_files(
    tmp_path: Path, redis_server: RedisServer, tls_files: tuple[Path, Path]
) -> None:
    service = receiver_service(tmp_path, redis_server.port, tls_files, receiver__workers=2)
    (tmp_path / "receiver_cert.pem").unlink()
    script = Path(sys.executable).with_name("manycore-receiver")
    argv = [str(script), "--global-config-file", str(service.global_file),
            "--customer-config-file", str(service.customer_file)]  # fmt: skip
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "receiver.workers" in result.stdout + result.stderr
