"""One consumer of a reliable queue (``queue`` tells the guarantees and the key layout):
its processing list, heartbeat, takes, acks, hand-overs, retries, dead letters and release."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from . import item as item_format
from . import queuescripts as lua
from .item import Item

if TYPE_CHECKING:
    from .queue import ReliableQueue

log = logging.getLogger(__name__)


class Consumer:
    """One consumer of one queue: its own processing list, its heartbeat, and the reaper.

    Usage (a service does the register, heartbeat and release with ``consuming``)::

        consumer = queue.consumer(default_consumer_id("transformer"))
        await consumer.register()
        keeper = asyncio.create_task(consumer.keep_alive(stop))
        while not stop.is_set():
            item = await consumer.take(timeout=1)
            ...  # then exactly one of ack / hand_over / retry / dead_letter
        await consumer.release()
    """

    def __init__(self, queue: ReliableQueue, consumer_id: str) -> None:
        self.queue = queue
        self.id = consumer_id
        self.processing_key = queue.processing_key(consumer_id)
        # What this process believes it holds (raw bytes → count), to spot items that are in
        # our processing list without our knowing (see recover_strays).
        self._held: dict[bytes, int] = {}
        self._suspects: set[bytes] = set()

    def _hold(self, items: list[Item]) -> list[Item]:
        for item in items:
            self._held[item.raw] = self._held.get(item.raw, 0) + 1
        return items

    def _drop(self, item: Item) -> None:
        count = self._held.get(item.raw, 0)
        if count <= 1:
            self._held.pop(item.raw, None)
        else:
            self._held[item.raw] = count - 1

    @property
    def holding(self) -> int:
        return sum(self._held.values())

    async def recover_strays(self) -> int:
        """Return items that sit in our processing list although we never received them: a
        BLMOVE/LMOVE executed by Redis whose reply was lost (timeout, dropped connection).
        An item counts as stray only when seen so on two consecutive calls, so a reply that
        is merely in flight is never mistaken for one."""
        raws: list[bytes] = await self.queue.redis.lrange(self.processing_key, 0, -1)  # type: ignore[assignment]
        strays = {raw for raw in raws if raw not in self._held}
        confirmed = strays & self._suspects
        self._suspects = strays - confirmed
        if not confirmed:
            return 0
        returned = int(
            await self.queue._return_strays(
                keys=[self.processing_key, self.queue.name], args=list(confirmed)
            )
        )
        if returned:
            log.warning("returned stray items", extra={"queue": self.queue.name, "count": returned})
        return returned

    async def register(self) -> None:
        """Heartbeat once; must happen before the first take so the reaper knows us."""
        await self.queue._heartbeat(keys=[self.queue.consumers_key], args=[self.id])

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Heartbeat and reap every third of the timeout until ``stop`` is set.

        A Redis outage must not kill the loop: it logs and tries again next period (our
        heartbeat may then lapse, which at worst returns our items to the queue; hand-over
        then refuses to duplicate them)."""
        interval = max(self.queue.heartbeat_timeout / 3, 0.05)
        while not stop.is_set():
            try:
                await self.register()
                await self.queue.reap()
                await self.recover_strays()
            except Exception as exc:  # noqa: BLE001 - keep the heartbeat alive whatever happens
                log.warning("heartbeat failed", extra={"queue": self.queue.name, "error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def take(self, timeout: float = 1.0) -> Item | None:
        """Block up to ``timeout`` seconds (at most half the heartbeat timeout) for the oldest
        item; it is then ours to settle."""
        # The registry entry goes first, in the same round trip and on the same connection, so
        # Redis has it before BLMOVE can move anything. The cap on the wait is what lets the
        # reaper forget a holder one timeout after marking it: no take can outlast that.
        limit = self.queue.heartbeat_timeout / 2
        wait = min(timeout, limit) if timeout > 0 else limit
        pipe = self.queue.redis.pipeline(transaction=False)
        pipe.zadd(self.queue.holders_key, {self.id: 0})
        # Redis takes fractional BLMOVE timeouts; redis-py's stub says int.
        pipe.blmove(self.queue.name, self.processing_key, wait, "RIGHT", "LEFT")  # type: ignore[arg-type]
        _, raw = await pipe.execute()
        return None if raw is None else self._hold([item_format.decode_stored(raw)])[0]

    async def take_batch(self, count: int, timeout: float = 1.0) -> list[Item]:
        """Up to ``count`` items: waits up to ``timeout`` for the first (0 = not at all), then
        takes what is already there, in one round trip."""
        first: list[Item] = []
        if timeout > 0:
            item = await self.take(timeout)
            if item is None:
                return []
            first, count = [item], count - 1
        if count <= 0:
            return first
        try:
            raws: list[Any] = await self.queue._take_many(
                keys=[self.queue.name, self.processing_key, self.queue.holders_key],
                args=[count, self.id],
            )
        except (RedisError, OSError):
            if first:
                # Never lose sight of an item we hold: raising here would leave it in our
                # processing list with nobody settling it (the fault suite found this). What
                # the failed call may have moved is a stray, and recover_strays returns it.
                return first
            raise
        return first + self._hold([item_format.decode_stored(raw) for raw in raws])

    def forget(self, item: Item) -> None:
        """Stop counting ``item`` as ours although it is still in our processing list: for an
        item we cannot settle now because Redis fails. ``recover_strays`` (run by
        ``keep_alive``) then returns it to the queue, without counting an attempt, once
        Redis answers; the reaper does if we die first."""
        self._drop(item)

    def settled(self, item: Item) -> None:
        """The caller's own script removed ``item`` from our processing list (an ack inside a
        larger atomic step, e.g. PostfixLog's record): stop counting it as ours."""
        self._drop(item)

    async def ack(self, item: Item) -> bool:
        """Done with it. False means we no longer held it (the reaper had returned it)."""
        self._drop(item)
        removed = await self.queue.redis.lrem(
            self.processing_key,
            1,
            item.raw,  # type: ignore[arg-type]
        )
        return int(removed) == 1

    async def ack_many(self, items: Sequence[Item]) -> int:
        """``ack`` for several items in one round trip (one script call, not one LREM each);
        returns how many we still held (the others the reaper had returned)."""
        if not items:
            return 0
        for item in items:
            self._drop(item)
        return int(
            await self.queue._ack_many(keys=[self.processing_key], args=[i.raw for i in items])
        )

    async def hand_over(self, item: Item, target: ReliableQueue, new_raw: bytes) -> bool:
        """Atomically remove ``item`` from our hands and put ``new_raw`` on ``target``.

        False means we no longer held it, and nothing was pushed (no duplicate)."""
        self._drop(item)
        moved = await self.queue._hand_over(
            keys=[self.processing_key, target.name], args=[item.raw, new_raw]
        )
        return int(moved) == 1

    async def hand_over_many(
        self, pairs: Sequence[tuple[Item, bytes]], target: ReliableQueue
    ) -> int:
        """``hand_over`` for several items in one round trip; returns how many moved."""
        if not pairs:
            return 0
        args: list[bytes] = []
        for held, new_raw in pairs:
            self._drop(held)
            args += [held.raw, new_raw]
        return int(await self.queue._hand_over(keys=[self.processing_key, target.name], args=args))

    async def hand_over_split(
        self, splits: Sequence[tuple[Item, Sequence[bytes]]], target: ReliableQueue
    ) -> tuple[int, int]:
        """``hand_over_many`` where each held item becomes one or more items on ``target``,
        in one round trip: per held item all of its new items or (no longer held) none.
        Returns (held items handed over, new items pushed)."""
        if not splits:
            return 0, 0
        args: list[bytes | int] = []
        for held, new_raws in splits:
            if not new_raws:
                raise ValueError("hand_over_split: every held item needs at least one new item")
            self._drop(held)
            args += [held.raw, len(new_raws), *new_raws]
        # Registered here, not in ReliableQueue.__init__: redis-py's Script only hashes the
        # text and loads it on first use, so this costs microseconds.
        script = self.queue.redis.register_script(lua.HAND_OVER_SPLIT)
        moved, pushed = await script(keys=[self.processing_key, target.name], args=args)
        return int(moved), int(pushed)

    async def retry(self, item: Item, reason: str) -> str:
        """A failed attempt: back of the queue, or the dead-letter list once attempts reach
        ``max_attempts``. Returns ``'requeued'``, ``'dead'`` or ``'gone'``."""
        self._drop(item)
        result = await self.queue._retry(
            keys=[self.processing_key, self.queue.name, self.queue.dead_key],
            args=[item.raw, reason, self.queue.max_attempts, self.queue.name],
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def dead_letter(
        self, item: Item, reason: str, event: tuple[ReliableQueue, bytes] | None = None
    ) -> bool:
        """Quarantine an item that can never succeed (e.g. unknown From domain), and push
        ``event`` (queue, item) in the same step when given."""
        self._drop(item)
        keys = [self.processing_key, self.queue.dead_key]
        args: list[str | bytes] = [item.raw, reason, self.queue.name]
        if event is not None:
            keys.append(event[0].name)
            args.append(event[1])
        result = await self.queue._dead_letter(keys=keys, args=args)
        return int(result) == 1

    async def release(self) -> int:
        """Graceful stop: give back everything we hold (front of the line) and unregister."""
        self._held.clear()
        self._suspects.clear()
        return int(
            await self.queue._release(
                keys=[
                    self.processing_key,
                    self.queue.name,
                    self.queue.consumers_key,
                    self.queue.holders_key,
                ],
                args=[self.id],
            )
        )
