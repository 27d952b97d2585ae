"""Classification off the event loop: a few worker processes, each message within a time limit.

Parsing MIME and matching text patterns is CPU work on bytes written by strangers; on the
event loop one slow message would stop every other client and ``/livez``. Each worker
process classifies one message at a time. A message that takes longer than the limit has its
worker killed (a thread cannot be stopped, a process can) and replaced, and is kept as
unclassified; a worker that dies (out of memory, a crash in a C extension) is replaced too.
The other workers, and the event loop, go on serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import resource
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from manycore_common.feedbacktag import Tag

from .authenticate import Analysis, Scope, analyse
from .classify import Classification, Envelope, Settings, classify
from .metrics import CLASSIFY_FAILED

log = logging.getLogger(__name__)


#: Longest a new worker process may take to start (import the classifier) before it counts
#: as broken.
START_SECONDS = 60.0


@dataclass(frozen=True)
class Job:
    mail_from: str
    rcpts: tuple[str, ...]
    tags: tuple[Tag, ...]
    data: bytes


def run(job: Job, settings: Settings, scope: Scope) -> Analysis:
    """What a worker does with one message (also callable in-process, e.g. in unit tests)."""
    try:
        c = classify(Envelope(job.mail_from, job.rcpts), job.data, settings)
    except RecursionError:
        c = Classification("unclassified", note="MIME nested too deeply to parse")
    return analyse(c, job.mail_from, job.tags, job.data, scope)


Work = Callable[[Job, Settings, Scope], Analysis]


def _serve(conn: Connection, settings: Settings, scope: Scope, max_memory: int, work: Work) -> None:
    """A worker process: answer jobs until the parent closes the pipe."""
    # The parent handles Ctrl-C and stops; a worker just sees its pipe close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if max_memory:
        # Past it, allocations raise MemoryError: the message is kept as unclassified.
        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(work(job, settings, scope))
        except Exception as exc:  # noqa: BLE001 - a parser bug must not kill the worker
            conn.send(Classification("unclassified", note=f"classifier error: {exc!r}"[:300]))


class _Worker:
    def __init__(self, settings: Settings, scope: Scope, max_memory: int, work: Work) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded event loop
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve,
            args=(child, settings, scope, max_memory, work),
            daemon=True,
            name="mxserver-classify",
        )
        self.process.start()
        child.close()

    def wait_ready(self) -> None:
        if not self.conn.poll(START_SECONDS) or self.conn.recv() != "ready":
            raise RuntimeError("classifier worker did not start")

    def roundtrip(self, job: Job) -> Any:
        self.conn.send(job)
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)

    def close(self) -> None:
        self.kill()
        self.conn.close()


class ClassifierPool:
    """``size`` worker processes; :meth:`analyse` waits for an idle one."""

    def __init__(
        self,
        size: int,
        timeout: float,
        settings: Settings,
        scope: Scope,
        max_memory: int = 0,
        work: Work = run,
    ) -> None:
        """``work`` runs in the worker (a module-level function: it is pickled by name)."""
        self.size = size
        self.timeout = timeout
        self.max_memory = max_memory
        self._work = work
        self._settings = settings
        self._scope = scope
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn() for _ in range(self.size)))

    async def _spawn(self) -> None:
        worker = await asyncio.to_thread(
            _Worker, self._settings, self._scope, self.max_memory, self._work
        )
        self._all.add(worker)
        try:
            await asyncio.to_thread(worker.wait_ready)
        except BaseException:
            self._all.discard(worker)
            await asyncio.to_thread(worker.close)
            raise
        self._idle.put_nowait(worker)

    async def _respawn(self) -> None:
        """A replacement worker; a failed start is logged and tried again."""
        while True:
            try:
                await self._spawn()
                return
            except (OSError, RuntimeError) as exc:
                log.error("cannot start a classifier worker", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    def _replace(self, worker: _Worker) -> None:
        self._all.discard(worker)
        task = asyncio.create_task(self._respawn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def analyse(self, job: Job) -> Analysis | str:
        """The analysis of a message, or why there is none ("timeout", "crash")."""
        worker = await self._idle.get()
        call = asyncio.ensure_future(asyncio.to_thread(worker.roundtrip, job))
        try:
            result = await asyncio.wait_for(asyncio.shield(call), self.timeout)
        except TimeoutError:
            await self._discard(worker, call, "timeout")
            return "timeout"
        except (EOFError, OSError):
            await self._discard(worker, call, "crash")
            return "crash"
        except asyncio.CancelledError:
            # The client went away: the worker is still busy with its message.
            task = asyncio.create_task(self._finish(worker, call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            raise
        self._idle.put_nowait(worker)
        if isinstance(result, Classification):  # the worker caught an error
            return Analysis(result, ())
        assert isinstance(result, Analysis)
        return result

    async def _discard(self, worker: _Worker, call: asyncio.Future[Any], reason: str) -> None:
        CLASSIFY_FAILED.labels(reason).inc()
        log.warning("classification failed, worker replaced", extra={"reason": reason})
        await asyncio.to_thread(worker.kill)
        with contextlib.suppress(Exception):
            await call  # the killed worker's pipe is closed: recv ends at once
        worker.conn.close()
        self._replace(worker)

    async def _finish(self, worker: _Worker, call: asyncio.Future[Any]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(call), self.timeout)
        except TimeoutError:
            await self._discard(worker, call, "timeout")
            return
        except (EOFError, OSError):
            await self._discard(worker, call, "crash")
            return
        self._idle.put_nowait(worker)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        workers: Sequence[_Worker] = list(self._all)
        self._all.clear()
        await asyncio.gather(*(asyncio.to_thread(w.close) for w in workers))
