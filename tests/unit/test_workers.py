"""Pure parts of workers.py: the restart pause and binding the shared listening socket."""

from __future__ import annotations

import socket

import pytest

from manycore_common.config import Listen
from manycore_common.supervisor import (
    FIRST_RESTART_PAUSE,
    MAX_RESTART_PAUSE,
    STABLE_SECONDS,
    restart_pause,
)
from manycore_common.workers import bind


def test_restart_pause_doubles_while_a_worker_keeps_failing() -> None:
    pauses = [0.0]
    for _ in range(8):
        pauses.append(restart_pause(pauses[-1], ran_for=0.5))
    assert pauses[1:5] == [FIRST_RESTART_PAUSE, 2 * FIRST_RESTART_PAUSE, 4.0, 8.0]
    assert max(pauses) == MAX_RESTART_PAUSE


def test_a_worker_that_ran_a_while_restarts_after_the_first_pause_again() -> None:
    assert restart_pause(MAX_RESTART_PAUSE, ran_for=STABLE_SECONDS) == FIRST_RESTART_PAUSE


def listen(port: int, interface: str = "127.0.0.1") -> Listen:
    return Listen.model_validate({"inet-interface": interface, "inet-port": port})


def test_bind_listens_non_blocking_on_each_address() -> None:
    sockets = bind(listen(0))
    try:
        assert len(sockets) == 1
        sock = sockets[0]
        assert sock.getsockname()[0] == "127.0.0.1"
        assert not sock.getblocking()
        with socket.create_connection(sock.getsockname()[:2], timeout=2):
            pass
    finally:
        for sock in sockets:
            sock.close()


def test_bind_reports_a_port_in_use_and_leaks_nothing() -> None:
    taken = bind(listen(0))
    try:
        with pytest.raises(OSError):
            bind(listen(taken[0].getsockname()[1]))
    finally:
        taken[0].close()
