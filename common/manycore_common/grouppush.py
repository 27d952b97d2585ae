"""Group commit for the front doors: messages accepted by concurrent connections share one
Redis round trip.

While one push is on its way to Redis, the messages that complete meanwhile wait in a list;
when the push returns, all of them go in the next one (one ``EVALSHA`` of the push script for
up to ``ReliableQueue.PUSH_CHUNK`` items). A lone client sees no added delay: with nothing in
flight its message is sent at once. Under load the number of round trips, syscalls and
redis-py calls per message falls with the concurrency; this was the largest cost the ingest
benchmark found after the front-door parse (bench/ingest.py).

Each waiter is answered only after Redis holds its item, as before
(docs/ARCHITECTURE.md#acknowledged). A batch is one script call, so it is all or nothing:
above the high-water mark every waiter of the batch gets QueueFull, and a Redis error
reaches every waiter of the batch, never a partial success. A waiter cancelled before its
batch leaves (its client went away) is dropped from the batch: nobody was told the message
was accepted, so it is not queued.

A message may carry a claim (idempotent submission, ``manycore_common.idempotency``): a
batch with claims goes in one call of the claiming push script, which answers per item.
A duplicate's waiter gets what its claim already held, full queue or not; the others of
the batch are pushed together or refused together, as above.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .idempotency import Claim
from .queue import QueueFull, ReliableQueue


@dataclass(slots=True)
class _Waiter:
    raw: bytes
    claim: Claim | None = None
    #: None once pushed; for a duplicate, the value its claim already held.
    done: asyncio.Future[bytes | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupPusher:
    def __init__(self, queue: ReliableQueue, max_batch: int = ReliableQueue.PUSH_CHUNK) -> None:
        if not 1 <= max_batch <= ReliableQueue.PUSH_CHUNK:
            # push_many splits above PUSH_CHUNK, and a split batch is no longer all or nothing.
            raise ValueError(f"max_batch must be 1..{ReliableQueue.PUSH_CHUNK}")
        self.queue = queue
        self.max_batch = max_batch
        self._pending: list[_Waiter] = []
        self._inflight: list[_Waiter] = []
        self._flusher: asyncio.Task[None] | None = None

    async def push(self, raw: bytes, claim: Claim | None = None) -> bytes | None:
        """Return None once Redis holds ``raw``, or, when ``claim`` was already held (a
        duplicate, not pushed), the value it held; raise what the push raised otherwise."""
        waiter = _Waiter(raw, claim)
        self._pending.append(waiter)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
            self._flusher.add_done_callback(self._flusher_done)
        return await waiter.done

    async def _flush(self) -> None:
        while self._pending:
            batch = [w for w in self._pending[: self.max_batch] if not w.done.done()]
            del self._pending[: self.max_batch]  # a done waiter was cancelled: client gone
            self._inflight = batch
            if batch:
                await self._push(batch)
            self._inflight = []
        # Here, not in the done callback: a push that comes before the callback runs must
        # start a new flusher rather than join one that has finished.
        self._flusher = None

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        """When the flusher was cancelled (the service stops, perhaps before the task ever
        ran), nobody may wait for ever: the waiters get a temporary error and their clients
        send again."""
        if not task.cancelled() and task.exception() is None:
            return
        if self._flusher is task:
            self._flusher = None
        for w in (*self._inflight, *self._pending):
            if not w.done.done():
                w.done.set_exception(ConnectionError("stopped before Redis answered"))
        self._inflight = []
        self._pending.clear()

    async def _push(self, batch: list[_Waiter]) -> None:
        earlier: tuple[bytes | None, ...] = (None,) * len(batch)
        full: QueueFull | None = None
        try:
            if any(w.claim is not None for w in batch):
                result = await self.queue.push_claimed([(w.raw, w.claim) for w in batch])
                earlier = result.earlier
                if result.full:
                    full = QueueFull(self.queue.name, self.queue.high_water_mark)
            else:
                await self.queue.push_many([w.raw for w in batch])
        except Exception as exc:  # noqa: BLE001 - not swallowed: each waiter raises it
            for w in batch:
                if not w.done.done():
                    w.done.set_exception(exc)
            return
        for w, held in zip(batch, earlier, strict=True):
            if w.done.done():
                continue
            if full is not None and held is None:
                w.done.set_exception(full)
            else:
                w.done.set_result(held)
