"""Front doors with ``workers: 2``: one parent process binding the port, handing each
connection to the next worker in turn and serving the probes and summed metrics (workers.py).
Real processes, real Redis, real clients."""

from __future__ import annotations

import os
import re
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from manycore_common import tls
from tests.helpers import RedisServer, Service, port_open, running, wait_for
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
    # A zombie (exited, not yet reaped) still answers kill(0); it may be reaped meanwhile.
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def counter(service: Service, name: str) -> float:
    _, body = service._get("/metrics")
    match = re.search(rf"^{name} ([0-9.e+]+)$", body.decode(), re.MULTILINE)
    assert match, body.decode()
    return float(match.group(1))


@pytest.fixture
def receiver2(
    tmp_path: Path, redis_server: RedisServer, tls_files: tuple[Path, Path]
) -> Iterator[Service]:
    service = receiver_service(tmp_path, redis_server.port, tls_files, receiver__workers=2)
    with running(service):
        yield service


def handled_by(log: Path, uuids: list[str]) -> list[int]:
    """Which worker logged each message. HttpReceiver writes its INFO lines in batches (at the
    latest after `log-buffer-seconds`, 1 s), so wait until every uuid's line is there."""
    wait_for(
        lambda: all(f'"uuid": "{uuid}"' in log.read_text() for uuid in uuids),
        timeout=10,
        what="every message's log line",
    )
    text = log.read_text()
    found = []
    for uuid in uuids:
        match = re.search(rf'"worker": (\d+), "uuid": "{uuid}"', text)
        assert match, (uuid, text[-2000:])
        found.append(int(match.group(1)))
    return found


def test_receiver_workers_take_connections_in_turn_and_sum_their_counters(
    receiver2: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    uuids = [f"turn{n}" for n in range(4)]
    for uuid in uuids:  # one connection each
        code, reply = send(receiver2, client_tls, build_message(uuid))
        assert code == 250, reply
    assert queues.llen(P1) == 4
    # Round-robin: whichever worker's turn came first, they alternate.
    workers = handled_by(receiver2.log, uuids)
    assert workers in ([0, 1, 0, 1], [1, 0, 1, 0]), workers
    # Each worker counted its own two; the parent's /metrics adds them up.
    assert counter(receiver2, "nbr_emails_enqueued_total") == 4
    assert receiver2.readyz() == (200, {"status": "ready"})


def test_workers_report_the_certificate_expiry_once(
    receiver2: Service, tls_files: tuple[Path, Path]
) -> None:
    # Each worker loaded the same file; the gauge's "max" mode reports it once, unlabelled.
    expires = tls.not_after(tls_files[0].read_bytes())
    assert counter(receiver2, "tls_certificate_expiry_timestamp_seconds") == expires


def test_a_worker_that_dies_is_started_again(
    receiver2: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    first, second = workers_of(receiver2)
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: not alive(second), 10, what="the worker to die")
    # The other worker takes every connection meanwhile; the port never closed.
    for n in range(3):
        code, reply = send(receiver2, client_tls, build_message(f"during{n}"))
        assert code == 250, reply
    wait_for(lambda: second not in children(pid(receiver2)), 10, what="the old worker reaped")
    replacement = [p for p in workers_of(receiver2) if p != first]
    assert len(replacement) == 1 and replacement[0] != second
    wait_for(receiver2.ready, 10, what="ready again")
    log = receiver2.log.read_text()
    assert '"msg": "worker exited"' in log and '"msg": "starting the worker again"' in log
    after = [f"after{n}" for n in range(2)]
    for uuid in after:
        code, reply = send(receiver2, client_tls, build_message(uuid))
        assert code == 250, reply
    assert queues.llen(P1) == 5
    assert sorted(handled_by(receiver2.log, after)) == [0, 1]  # the new worker has turns


def test_a_worker_stops_gracefully_even_when_signalled_twice(
    receiver2: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    # As when both the parent and a signal to the whole process group reach it.
    _, second = workers_of(receiver2)
    os.kill(second, signal.SIGTERM)
    os.kill(second, signal.SIGTERM)
    wait_for(lambda: not alive(second), 15, what="the worker to stop")
    wait_for(lambda: '"exit_code": ' in receiver2.log.read_text(), 10, what="its exit logged")
    log = receiver2.log.read_text()
    assert re.search(r'"msg": "worker exited", [^\n]*"exit_code": 0}', log), log
    assert "second signal" not in log
    workers_of(receiver2)  # and it is replaced
    code, reply = send(receiver2, client_tls, build_message("twice"))
    assert code == 250, reply


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
        pids = workers_of(api)
        uuids = [f"http{n}" for n in range(4)]
        for uuid in uuids:  # http.client: one connection per request
            status, _, body = post(api, build_message(uuid))
            assert status == 200, body
        assert queues.llen(P1) == 4
        assert sorted(handled_by(api.log, uuids)) == [0, 0, 1, 1]
        assert counter(api, "nbr_emails_enqueued_total") == 4
        assert api.stop(signal.SIGTERM) == 0
        assert not any(alive(p) for p in pids)


def test_several_workers_need_the_certificate_files(
    tmp_path: Path, redis_server: RedisServer, tls_files: tuple[Path, Path]
) -> None:
    service = receiver_service(tmp_path, redis_server.port, tls_files, receiver__workers=2)
    (tmp_path / "receiver_cert.pem").unlink()
    result = service.run_to_exit()
    assert result.returncode == 2, result
    assert "receiver.workers" in result.stdout + result.stderr
