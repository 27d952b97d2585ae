"""Worker processes for the front doors (Receiver, HttpReceiver).

One Python process runs one event loop on one core. With ``workers: N`` in its section a
front door runs N processes that accept on the same listening socket, so one pod (or one
machine under ``make run``) can use N cores. The ingest benchmark found the Receiver bound by
one core at 8 connections (bench/ingest.py).

The parent, the process Kubernetes or the operator started:

- binds the listening socket(s) once, so a bind error is reported once, and the port keeps
  accepting (the kernel queues connections) while a worker restarts;
- starts each worker as a fresh interpreter of the same service with the same arguments.
  Fresh, not forked: prometheus_client chooses its multiprocess mode when it is imported, and
  the parent has imported it long before it reads ``workers`` from the config;
- serves ``/metrics`` (every worker's counters added up, prometheus_client's multiprocess
  mode; the front doors have only counters, which add exactly), ``/livez`` and ``/readyz``
  (Redis answers and every worker is running);
- restarts a worker that exits on its own, after a pause that grows while restarts keep
  failing, so a worker that cannot start does not spin;
- on SIGTERM passes the stop on and waits until every worker has stopped gracefully (each
  stops accepting and answers what is in flight, DESIGN §3); a second signal kills them.

A worker learns all this from its environment (``handoff``): the listening sockets' file
descriptors, its index, and the read end of a pipe whose write end only the parent holds.
End of file on that pipe means the parent is gone (even by SIGKILL): the worker stops
gracefully rather than outlive it holding the port. A worker ignores SIGINT: Ctrl-C reaches the
whole process group, and only the parent decides what it means.

State kept in memory is per worker, as it is per replica: the AUTH failure throttle counts
the failures each worker saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from . import redisconn
from .config import Listen, Prometheus, ReliableQueueClient
from .health import HealthServer

log = logging.getLogger(__name__)

#: Environment a worker is started with.
ENV_INDEX = "MANYCORE_WORKER_INDEX"
ENV_LISTEN_FDS = "MANYCORE_WORKER_LISTEN_FDS"
ENV_PARENT_FD = "MANYCORE_WORKER_PARENT_FD"
#: prometheus_client reads this when imported: each worker keeps its values in files there.
ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: A worker that ran at least this long before exiting is restarted after the first pause
#: again; one that keeps failing waits longer each time, up to MAX_RESTART_PAUSE.
STABLE_SECONDS = 30.0
FIRST_RESTART_PAUSE = 1.0
MAX_RESTART_PAUSE = 30.0
#: The kernel's queue of connections not yet accepted (asyncio's default).
BACKLOG = 100


@dataclass(frozen=True)
class Handoff:
    """What a worker received from its parent."""

    index: int
    listeners: tuple[socket.socket, ...]
    parent_fd: int


@cache
def handoff() -> Handoff | None:
    """This process's hand-off when it is a worker; None in a process the operator started."""
    index = os.environ.get(ENV_INDEX)
    if index is None:
        return None
    fds = [int(fd) for fd in os.environ[ENV_LISTEN_FDS].split(",")]
    return Handoff(
        index=int(index),
        listeners=tuple(socket.socket(fileno=fd) for fd in fds),
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


class Acceptor:
    """Accepts connections on a socket shared with sibling workers, one per readiness event.

    Every worker is woken when a connection waits; the first to call accept() gets it and
    the others find nothing. asyncio's own server accepts up to its backlog (100) in one go,
    so whichever worker woke first would take a whole burst: with 8 connections opened at
    once, all 8 went to one worker and the other idled (bench/ingest.py). One at a time, a
    busy worker wakes later than an idle one and takes fewer. (SO_REUSEPORT would spread
    connections by a hash of their addresses, blind to load, and the port would be gone
    whenever no worker is listening.)"""

    #: Pause after accept() fails for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM),
    #: as asyncio does, so a full file table does not spin the loop.
    RESOURCE_PAUSE = 1.0

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol]):
        self.sock = sock
        self.protocol_factory = protocol_factory
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[object]] = set()
        self._serving = False

    def start(self) -> None:
        self._serving = True
        self._loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        """Stop accepting (connections already accepted carry on)."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self.sock.fileno())

    def is_serving(self) -> bool:
        return self._serving

    async def wait_closed(self) -> None:
        """Like asyncio.Server's: the sessions themselves are the caller's to close."""

    def _ready(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # a sibling was quicker, or the client gave up
        except OSError as exc:
            log.error("accept failed: pausing", extra={"error": str(exc)})
            self._loop.remove_reader(self.sock.fileno())
            self._loop.call_later(self.RESOURCE_PAUSE, self._resume)
            return
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

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self.sock.fileno(), self._ready)


def restart_pause(previous: float, ran_for: float) -> float:
    """How long to wait before starting a worker again."""
    if ran_for >= STABLE_SECONDS or previous <= 0:
        return FIRST_RESTART_PAUSE
    return min(previous * 2, MAX_RESTART_PAUSE)


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.pause = 0.0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """The parent of ``count`` workers of ``module`` (run as ``python -m module *argv``)."""

    def __init__(
        self,
        module: str,
        argv: Sequence[str],
        count: int,
        listeners: Sequence[socket.socket],
        *,
        stop_timeout: float,
    ) -> None:
        self.module = module
        self.argv = list(argv)
        self.listeners = list(listeners)
        self.stop_timeout = stop_timeout
        self.workers = [_Worker(i) for i in range(count)]
        self.metrics_dir = tempfile.mkdtemp(prefix=f"manycore-{module}-metrics-")
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        self._parent_read, self._parent_write = os.pipe()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def all_running(self) -> bool:
        return all(w.running for w in self.workers)

    async def _spawn(self, worker: _Worker) -> None:
        fds = [s.fileno() for s in self.listeners]
        env = {
            **os.environ,
            ENV_INDEX: str(worker.index),
            ENV_LISTEN_FDS: ",".join(map(str, fds)),
            ENV_PARENT_FD: str(self._parent_read),
            ENV_METRICS_DIR: self.metrics_dir,
        }
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.argv,
            pass_fds=(*fds, self._parent_read),
            env=env,
        )
        worker.started = time.monotonic()
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    async def _keep(self, worker: _Worker) -> None:
        """Start ``worker`` again whenever it exits before the stop."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping.is_set():
                return
            worker.pause = restart_pause(worker.pause, time.monotonic() - worker.started)
            log.error(
                "worker exited: starting it again",
                extra={"worker": worker.index, "exit_code": code, "pause_seconds": worker.pause},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), worker.pause)
            if self._stopping.is_set():
                return
            await self._spawn(worker)

    async def start(self) -> None:
        for worker in self.workers:
            await self._spawn(worker)
            self._tasks.append(asyncio.create_task(self._keep(worker)))

    def kill(self) -> None:
        """Second signal: no grace."""
        for worker in self.workers:
            if worker.running:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    async def stop(self) -> None:
        """Pass the stop on, wait for every worker's graceful stop (kill after the timeout),
        then release the port, the pipe and the metrics files."""
        self._stopping.set()
        running = [w.process for w in self.workers if w.running and w.process is not None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), self.stop_timeout)
        except TimeoutError:
            log.error("workers did not stop in time: killing them")
            self.kill()
            await asyncio.gather(*(p.wait() for p in running))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self.listeners:
            sock.close()
        os.close(self._parent_write)
        os.close(self._parent_read)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


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

    async def redis_ok() -> bool:
        return bool(await redis.ping())

    async def workers_running() -> bool:
        return supervisor.all_running()

    health = HealthServer(
        section.prometheus,
        {"redis": redis_ok, "workers": workers_running},
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
