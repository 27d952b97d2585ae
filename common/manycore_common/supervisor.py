"""The parent's side of the front doors' worker processes (``workers`` tells the whole
story): ``Supervisor`` starts ``count`` fresh interpreters of the service, hands each accepted
connection to the next one in turn over its socketpair, restarts one that exits on its own
after a pause that grows while restarts keep failing, and passes a stop on.

The ``ENV_*`` names are the contract with a worker (read by ``workers.handoff``).
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
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

#: Environment a worker is started with.
ENV_INDEX = "MANYCORE_WORKER_INDEX"
ENV_CHANNEL_FD = "MANYCORE_WORKER_CHANNEL_FD"
ENV_PARENT_FD = "MANYCORE_WORKER_PARENT_FD"
#: prometheus_client reads this when imported: each worker keeps its values in files there.
ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: A worker that ran at least this long before exiting is restarted after the first pause
#: again; one that keeps failing waits longer each time, up to MAX_RESTART_PAUSE.
STABLE_SECONDS = 30.0
FIRST_RESTART_PAUSE = 1.0
MAX_RESTART_PAUSE = 30.0
#: Pause after accept() fails for lack of resources, as asyncio's server does.
RESOURCE_PAUSE = 1.0


def restart_pause(previous: float, ran_for: float) -> float:
    """How long to wait before starting a worker again."""
    if ran_for >= STABLE_SECONDS or previous <= 0:
        return FIRST_RESTART_PAUSE
    return min(previous * 2, MAX_RESTART_PAUSE)


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        #: The parent's end of the socketpair connections are handed over on.
        self.channel: socket.socket | None = None
        #: The worker said it is serving (see Inbox.start).
        self.serving = False
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
        self._next = 0  # the worker whose turn it is
        #: Accepting paused because no worker runs: connections wait in the kernel's queue.
        self._no_worker = False

    def ready(self) -> bool:
        """Every worker is running and has said it serves, and the stop has not begun."""
        return not self._stopping.is_set() and all(w.running and w.serving for w in self.workers)

    def _close_channel(self, worker: _Worker) -> None:
        if worker.channel is not None:
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            worker.channel.close()
            worker.channel = None
        worker.serving = False

    def _heard(self, worker: _Worker, channel: socket.socket) -> None:
        """A worker's word on its channel: "r" once it serves; end of file once it is gone."""
        try:
            data = channel.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            if worker.channel is channel:
                worker.serving = False
        elif worker.channel is channel and b"r" in data:
            worker.serving = True

    async def _spawn(self, worker: _Worker) -> None:
        # SEQPACKET keeps each hand-over a message of its own, with its one descriptor.
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_end.setblocking(False)
        env = {
            **os.environ,
            ENV_INDEX: str(worker.index),
            ENV_CHANNEL_FD: str(child_end.fileno()),
            ENV_PARENT_FD: str(self._parent_read),
            ENV_METRICS_DIR: self.metrics_dir,
        }
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                *self.argv,
                pass_fds=(child_end.fileno(), self._parent_read),
                env=env,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self._close_channel(worker)
        worker.channel = parent_end
        asyncio.get_running_loop().add_reader(parent_end.fileno(), self._heard, worker, parent_end)
        worker.started = time.monotonic()
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})
        if self._no_worker:
            self._no_worker = False
            self._start_accepting()

    def _accept(self, listener: socket.socket) -> None:
        """Take every waiting connection and hand each to a worker."""
        while True:
            if not any(w.running and w.channel is not None for w in self.workers):
                # Leave them in the kernel's queue until a worker is back (see _spawn).
                log.error("no worker running: not accepting until one is")
                self._no_worker = True
                self._stop_accepting()
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: pause as asyncio does, rather than spin.
                log.error("accept failed: pausing", extra={"error": str(exc)})
                self._stop_accepting()
                asyncio.get_running_loop().call_later(RESOURCE_PAUSE, self._start_accepting)
                return
            with conn:  # the parent's copy; the worker received its own
                self._hand_out(conn)

    def _hand_out(self, conn: socket.socket) -> None:
        """Send ``conn`` to the next worker in turn that takes it."""
        count = len(self.workers)
        for step in range(count):
            worker = self.workers[(self._next + step) % count]
            if worker.channel is None or not worker.running:
                continue
            try:
                socket.send_fds(worker.channel, [b"c"], [conn.fileno()])
            except OSError:
                # Its channel is full (a stuck worker) or closed (it just died): next one.
                continue
            self._next = (self._next + step + 1) % count
            return
        log.warning("no worker could take a connection: closed it")

    def _start_accepting(self) -> None:
        if self._stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            loop.add_reader(listener.fileno(), self._accept, listener)

    def _stop_accepting(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            loop.remove_reader(listener.fileno())

    async def _keep(self, worker: _Worker) -> None:
        """Start ``worker`` again whenever it exits (or fails to start) before the stop."""
        while True:
            if worker.process is not None:
                code = await worker.process.wait()
                if self._stopping.is_set():
                    return
                log.error("worker exited", extra={"worker": worker.index, "exit_code": code})
            worker.pause = restart_pause(worker.pause, time.monotonic() - worker.started)
            log.info(
                "starting the worker again",
                extra={"worker": worker.index, "pause_seconds": worker.pause},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), worker.pause)
            if self._stopping.is_set():
                return
            try:
                await self._spawn(worker)
            except OSError as exc:  # fork or exec failed (EAGAIN, ENOMEM, EMFILE): try again
                log.error("cannot start worker", extra={"worker": worker.index, "error": str(exc)})
                worker.process = None
                worker.started = time.monotonic()

    async def start(self) -> None:
        for worker in self.workers:
            await self._spawn(worker)
            self._tasks.append(asyncio.create_task(self._keep(worker)))
        self._start_accepting()

    def kill(self) -> None:
        """Second signal: no grace."""
        for worker in self.workers:
            if worker.running:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    async def _terminate(self, deadline: float) -> None:
        """SIGTERM every running worker and wait for it until ``deadline``, then kill."""
        running = [w.process for w in self.workers if w.running and w.process is not None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in running)), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            log.error("workers did not stop in time: killing them")
            self.kill()
            await asyncio.gather(*(p.wait() for p in running))

    async def stop(self) -> None:
        """Stop accepting and close the port (new clients are refused at once, as by one
        process), pass the stop on, wait for every worker's graceful stop (kill after the
        timeout), then release the pipe and the metrics files."""
        self._stopping.set()
        self._stop_accepting()
        for sock in self.listeners:
            sock.close()
        deadline = time.monotonic() + self.stop_timeout
        await self._terminate(deadline)
        # The keepers return now; one that was starting a worker when the stop came has
        # started it by the time it returns: stop that one too.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._terminate(deadline)
        for worker in self.workers:
            self._close_channel(worker)
        os.close(self._parent_write)
        os.close(self._parent_read)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
