"""Worker processes for the front doors (Receiver, HttpReceiver).

One Python process runs one event loop on one core. With ``workers: N`` in its section a
front door runs N processes serving one port, so one pod (or one machine under ``make run``)
can use N cores. The ingest benchmark found the Receiver bound by one core at 8 connections
(bench/ingest.py).

The parent, the process Kubernetes or the operator started:

- binds the listening socket(s) once, so a bind error is reported once and the port stays
  open while a worker restarts;
- accepts every connection itself and hands it to the next worker in turn (round-robin),
  passing the socket over a Unix socketpair (SCM_RIGHTS). Letting the workers accept on the
  shared socket leaves the balance to whichever wakes first, and connections opened at once
  pile onto one worker (bench/README.md). Node's cluster module hands connections out the same way
  for the same reason. Clients keep their connections (SMTP sessions, HTTP keep-alive), so
  turns even out the work;
- starts each worker as a fresh interpreter of the same service with the same arguments.
  Fresh, not forked: prometheus_client chooses its multiprocess mode when it is imported, and
  the parent has imported it long before it reads ``workers`` from the config;
- serves ``/metrics`` (every worker's counters added up, prometheus_client's multiprocess
  mode; the front doors have only counters, which add exactly), ``/livez`` and ``/readyz``
  (Redis answers and every worker has said it serves);
- restarts a worker that exits on its own, after a pause that grows while restarts keep
  failing, so a worker that cannot start does not spin; meanwhile the others get its turns;
- on SIGTERM stops accepting, passes the stop on and waits until every worker has stopped
  gracefully (each answers what is in flight, docs/ARCHITECTURE.md#runtime-contract); a second
  signal kills them.

A worker learns all this from its environment (``handoff``): its index, its end of the
socketpair, and the read end of a pipe whose write end only the parent holds. End of file on
that pipe means the parent is gone (even by SIGKILL): the worker stops gracefully. A worker
ignores SIGINT: Ctrl-C reaches the whole process group, and only the parent decides what it
means.

State kept in memory is per worker, as it is per replica: the AUTH failure throttle counts
the failures each worker saw.

The parent's side is ``supervisor.Supervisor``; this module binds, runs the parent
(``run_parent``) and is the worker's side (``handoff``, ``Inbox``, ``watch_parent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

from . import redisconn, redisready
from .config import Listen, Prometheus, ReliableQueueClient
from .health import HealthServer
from .supervisor import ENV_CHANNEL_FD, ENV_INDEX, ENV_PARENT_FD, Supervisor

log = logging.getLogger(__name__)

#: The kernel's queue of connections not yet accepted (asyncio's default).
BACKLOG = 100


@dataclass(frozen=True)
class Handoff:
    """What a worker received from its parent."""

    index: int
    #: The worker's end of the socketpair its connections arrive on.
    channel: socket.socket
    parent_fd: int


@cache
def handoff() -> Handoff | None:
    """This process's hand-off when it is a worker; None in a process the operator started."""
    index = os.environ.get(ENV_INDEX)
    if index is None:
        return None
    return Handoff(
        index=int(index),
        channel=socket.socket(fileno=int(os.environ[ENV_CHANNEL_FD])),
        parent_fd=int(os.environ[ENV_PARENT_FD]),
    )


def bind(listen: Listen) -> list[socket.socket]:
    """Listening sockets for ``listen``, bound as asyncio's create_server binds them: one per
    address the interface resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            listen.inet_interface,
            listen.inet_port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def watch_parent(fd: int, gone: Callable[[], object]) -> None:
    """Call ``gone`` once when the parent's end of the pipe closes."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        loop.remove_reader(fd)
        log.warning("parent process gone: stopping")
        gone()

    loop.add_reader(fd, readable)


class Inbox:
    """A worker's side of the hand-out: connections arrive on the channel, one socket per
    message, and each is served by ``protocol_factory`` as if the worker had accepted it."""

    def __init__(
        self, channel: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol]
    ):
        self.channel = channel
        self.channel.setblocking(False)
        self.protocol_factory = protocol_factory
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[object]] = set()
        self._serving = False

    def start(self) -> None:
        self._serving = True
        self._loop.add_reader(self.channel.fileno(), self._readable)
        # Tell the parent: its /readyz waits for every worker to say so.
        with contextlib.suppress(OSError):
            self.channel.send(b"r")

    def close(self) -> None:
        """Take no more connections (those already taken carry on). The parent's next
        hand-over to this worker fails, so it goes to another; connections already in the
        channel are closed unanswered, and their clients try again."""
        if not self._serving:
            return
        self._serving = False
        self._loop.remove_reader(self.channel.fileno())
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RD)
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
            except OSError:
                break
            if not fds:
                break
            for fd in fds:
                os.close(fd)

    def is_serving(self) -> bool:
        return self._serving

    async def wait_closed(self) -> None:
        """Like asyncio.Server's: the sessions themselves are the caller's to close."""

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            if not data and not fds:
                self.close()  # the parent is gone; lifecycle's watch on the pipe stops us
                return
            if not self._serving:
                return
            for fd in fds:
                self._serve(socket.socket(fileno=fd))

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task: asyncio.Task[object] = self._loop.create_task(
            self._loop.connect_accepted_socket(self.protocol_factory, conn)
        )
        self._pending.add(task)
        task.add_done_callback(lambda t: self._connected(t, conn))

    def _connected(self, task: asyncio.Task[object], conn: socket.socket) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            conn.close()


class FrontDoor(Protocol):
    """What the parent needs of a front door's config section."""

    @property
    def workers(self) -> int: ...
    @property
    def bind(self) -> Listen: ...
    @property
    def prometheus(self) -> Prometheus: ...
    @property
    def reliable_queue(self) -> ReliableQueueClient: ...


async def run_parent(
    section: FrontDoor,
    module: str,
    argv: Sequence[str],
    stop: asyncio.Event,
    *,
    stop_timeout: float,
    on_forced_exit: Callable[[Callable[[], None]], object],
) -> None:
    """The parent of ``section.workers`` workers, until ``stop``."""
    listeners = bind(section.bind)
    log.info(
        "listening",
        extra={
            "address": section.bind.inet_interface,
            "port": section.bind.inet_port,
            "workers": section.workers,
        },
    )
    supervisor = Supervisor(module, argv, section.workers, listeners, stop_timeout=stop_timeout)
    on_forced_exit(supervisor.kill)
    redis = redisconn.connect(section.reliable_queue.redis)

    async def workers_running() -> bool:
        return supervisor.ready()

    health = HealthServer(
        section.prometheus,
        {"redis": redisready.answers(redis), "workers": workers_running},
        registry=supervisor.registry,
    )
    try:
        await supervisor.start()
        await health.start()
        await stop.wait()
    finally:
        await supervisor.stop()
        await health.stop()
        await redis.aclose()
