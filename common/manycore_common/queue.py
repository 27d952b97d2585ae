"""The reliable queue (docs/ARCHITECTURE.md#queues): nothing acknowledged is lost, hand-over is
atomic, poison is quarantined. Built on Redis lists with the "reliable queue" pattern (BLMOVE into a
list owned by the consumer) plus heartbeats, a reaper and a delivery counter.

Key layout, for a queue named ``Q`` (the name from the global config, e.g. ``IB-MAIL-QUEUE-P0``,
with ``reliable-queue.key-prefix`` in front when one is set). The names are built by
``manycore_common.keyspace``: every key of one queue carries the hash tag ``{Q}`` (or ``Q``'s own
tag), so it lives in one Redis Cluster slot with the list ``Q``:

``Q`` (LIST)
    Waiting items. Producers LPUSH; consumers take from the right, so the oldest item goes
    first (FIFO). Its length is what the README's queue gauges report.
``{Q}:processing:<consumer>`` (LIST)
    Items one consumer holds. ``BLMOVE Q … RIGHT LEFT`` moves an item here atomically; it
    leaves only by ack (LREM), hand-over (LREM + LPUSH to the next queue, one script), retry,
    dead-letter, release, or the reaper.
``{Q}:consumers`` (ZSET)
    Consumer id → last heartbeat, in Redis server time (ms), so client clocks do not matter.
``{Q}:holders`` (ZSET)
    The registry of processing lists: every consumer whose ``{Q}:processing:<id>`` may hold
    items is here, so the reaper, ``processing_size`` and the exporter read this set (and
    ``{Q}:consumers``) instead of scanning the keyspace; their cost grows with the consumers,
    not with the keys in Redis. Score 0: the consumer is taking (every take sets it before
    or with the move: in the same pipelined round trip as BLMOVE, in the same script as the
    batch take). Score T > 0: the consumer has had no heartbeat entry since T (server ms;
    set by the reaper or a graceful release). A consumer without a heartbeat entry keeps its
    items for one heartbeat timeout after T (it may be alive and about to register again);
    then the reaper returns them and forgets the consumer. The heartbeat does not touch it:
    only taking can fill a processing list.
``{Q}:dead`` (LIST)
    Dead letters: the item with ``dead`` = {reason, at, queue} added to its header; newest at
    the left.
``{Q}:doorbell`` (LIST, at most one token)
    Only for queues made with ``doorbell=True`` (P0 and P1): set by every push, in the push
    script, so that a consumer of both blocks on both at once (``wait_for_doorbells``).
``idem:<hash>`` (STRING, with a TTL)
    Not one queue's: the claim of a submitted message (``manycore_common.idempotency``),
    set by ``push_claimed`` in the same script as the push, so two concurrent submissions
    of one message queue exactly one, and a refused push (queue full, Redis error) leaves
    no claim. A group-commit batch passes all its claims in KEYS: on a Redis Cluster, the
    key prefix puts them in the queue's slot.

Items are ``manycore_common.item`` bytes (a JSON header line, then the payload). The scripts
rewrite only the header, with Redis' built-in cjson, to count attempts and record why an item
died; the payload is never re-encoded.

Guarantees and the reasons for them:

* A consumer killed at any instant loses nothing: what it held is in its processing list, and
  once its heartbeat is older than the timeout any consumer's reaper moves those items back to
  the *right* end of ``Q`` (they are served next), counting one failed attempt each.
* A consumer that was presumed dead but comes back (a long pause) cannot duplicate: ack and
  hand-over first LREM the item from its own processing list and do nothing else if it is no
  longer there (the reaper already gave it to someone else).
* An item whose attempts reach ``max_attempts`` goes to ``{Q}:dead`` with its reason instead of
  back to ``Q``; an operator lists and requeues dead letters (``manycore-queues``).
* Producers are refused (``QueueFull``) above the high-water mark, so backpressure reaches the
  client as an SMTP 451 / HTTP 503 instead of Redis running out of memory.

No script builds a key name: every key a script touches is in its KEYS (the reaper first
reads which consumers need attention, then passes their processing lists).

The previous release's key names (``Q:dead`` ...) and processing lists made before the
registry are read by ``queuelegacy`` (``ReliableQueue.reap_legacy``, ``adopt_unregistered``),
so a rolling upgrade loses nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import item as item_format
from . import keyspace, queuelegacy, replicas
from . import queuescripts as lua
from .consumer import Consumer
from .item import Item

if TYPE_CHECKING:
    from .config import GlobalReliableQueue
    from .idempotency import Claim

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue is above its high-water mark; the producer must refuse new work for now."""

    def __init__(self, queue: str, high_water_mark: int) -> None:
        super().__init__(f"queue {queue} holds {high_water_mark} or more items")
        self.queue = queue
        self.high_water_mark = high_water_mark


@dataclass(frozen=True)
class ClaimedPush:
    """What ``push_claimed`` did: the queue's length (-1: full, nothing pushed, no claim
    made) and per item None (pushed, or refused when full) or the value its claim already
    held (a duplicate: not pushed, whether or not the queue is full)."""

    length: int
    earlier: tuple[bytes | None, ...]

    @property
    def full(self) -> bool:
        return self.length < 0


@dataclass(frozen=True)
class ReapResult:
    returned: int
    dead: int
    consumers: int

    def __add__(self, other: ReapResult) -> ReapResult:
        return ReapResult(
            self.returned + other.returned, self.dead + other.dead, self.consumers + other.consumers
        )


def default_consumer_id(service: str) -> str:
    """Unique per process and start: a restarted process never reuses a dead one's id."""
    return f"{service}:{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def configured(
    redis: Redis,
    name: str,
    settings: GlobalReliableQueue,
    *,
    bounded: bool = False,
    doorbell: bool = False,
) -> ReliableQueue:
    """A queue with the global ``reliable-queue`` settings: its attempts and heartbeat timeout,
    and (``bounded``: a queue whose pushes are refused when full) its high-water mark."""
    return ReliableQueue(
        redis,
        name,
        max_attempts=settings.max_attempts,
        heartbeat_timeout=settings.heartbeat_timeout_seconds,
        high_water_mark=settings.high_water_mark if bounded else 0,
        doorbell=doorbell,
    )


class ReliableQueue:
    """One named queue. Cheap to create; all state is in Redis."""

    #: Items per LPUSH when pushing many (keeps one script call's arguments bounded).
    PUSH_CHUNK = 500

    def __init__(
        self,
        redis: Redis,
        name: str,
        *,
        max_attempts: int = 5,
        heartbeat_timeout: float = 30.0,
        high_water_mark: int = 0,
        doorbell: bool = False,
        keys: keyspace.Keyspace | None = None,
    ) -> None:
        """``name`` is the configured queue name; ``keys`` the keyspace (by default the
        process's, ``keyspace.current()``), which makes it the list's key ``self.name``."""
        self.redis = redis
        self.keys = keys or keyspace.current()
        self.name = name = self.keys.queue(name)
        self.max_attempts = max_attempts
        self.heartbeat_timeout = heartbeat_timeout
        self.high_water_mark = high_water_mark
        self.consumers_key = self.keys.consumers(name)
        self.holders_key = self.keys.holders(name)
        self.dead_key = self.keys.dead(name)
        #: The names of the previous release, which ``reap`` still moves items from.
        self.legacy = keyspace.legacy_queue_keys(name[len(self.keys.prefix) :])
        #: With ``doorbell``, every push also leaves one token in this list, in the same
        #: script: a consumer of several queues blocks on all their doorbells at once
        #: (BLPOP takes many keys, BLMOVE only one) instead of polling them in turn. Only a
        #: wake-up: items that come back another way (reaper, requeue) wait for the
        #: consumer's next look, bounded by its wait timeout.
        self.doorbell_key = self.keys.doorbell(name)
        self._push_keys = [name, self.doorbell_key] if doorbell else [name]
        self._push = redis.register_script(lua.PUSH)
        self._push_claimed = redis.register_script(lua.PUSH_CLAIMED)
        self._take_many = redis.register_script(lua.TAKE_MANY)
        self._hand_over = redis.register_script(lua.HAND_OVER)
        self._ack_many = redis.register_script(lua.ACK_MANY)
        self._retry = redis.register_script(lua.RETRY)
        self._dead_letter = redis.register_script(lua.DEAD_LETTER)
        self._heartbeat = redis.register_script(lua.HEARTBEAT)
        self._reap_candidates = redis.register_script(lua.REAP_CANDIDATES)
        self._reap = redis.register_script(lua.REAP)
        self._return_strays = redis.register_script(lua.RETURN_STRAYS)
        self._release = redis.register_script(lua.RELEASE)
        self._requeue_dead = redis.register_script(lua.REQUEUE_DEAD)
        #: The previous release's keys' move (``queuelegacy``).
        self.move_legacy = redis.register_script(lua.MOVE_LEGACY)

    def processing_key(self, consumer_id: str) -> str:
        return self.keys.processing(self.name, consumer_id)

    # ------------------------------------------------------------------ producers

    async def push(self, raw: bytes) -> int:
        """Append one item; returns the queue length. Raises QueueFull above the mark."""
        length = int(
            await replicas.call(
                self.redis, self._push, self._push_keys, [self.high_water_mark, raw]
            )
        )
        if length < 0:
            raise QueueFull(self.name, self.high_water_mark)
        return length

    async def push_many(self, raws: Sequence[bytes]) -> int:
        """Append several items in order; all or (per chunk) nothing. Returns the length."""
        length = 0
        for start in range(0, len(raws), self.PUSH_CHUNK):
            chunk = list(raws[start : start + self.PUSH_CHUNK])
            length = int(
                await replicas.call(
                    self.redis, self._push, self._push_keys, [self.high_water_mark, *chunk]
                )
            )
            if length < 0:
                raise QueueFull(self.name, self.high_water_mark)
        return length

    async def push_claimed(self, items: Sequence[tuple[bytes, Claim | None]]) -> ClaimedPush:
        """Push the items, each only if its claim (``manycore_common.idempotency``; None:
        none) is not held yet, making the claims in the same script: a duplicate is never
        pushed, and a refused push (full, Redis error) makes no claim. One call of at most
        ``PUSH_CHUNK`` items, all or (full: only duplicates told apart) nothing."""
        if len(items) > self.PUSH_CHUNK:
            # Two script calls would no longer be all or nothing.
            raise ValueError(f"push_claimed takes at most {self.PUSH_CHUNK} items")
        claims = [claim for _, claim in items if claim is not None]
        # One TTL per call: every claim of one service has the configured window.
        ttl = max((claim.window for claim in claims), default=1)
        args: list[bytes | int] = [self.high_water_mark, ttl, len(self._push_keys) - 1]
        for raw, claim in items:
            args += [b"" if claim is None else claim.value, raw]
        reply = await replicas.call(
            self.redis,
            self._push_claimed,
            [*self._push_keys, *(claim.key for claim in claims)],
            args,
        )
        return ClaimedPush(int(reply[0]), tuple(bytes(v) or None for v in reply[1:]))

    async def ring_doorbell(self) -> None:
        """Leave a doorbell token without pushing: a consumer that took a full batch (so more
        is probably waiting) wakes a sibling blocked in ``wait_for_doorbells``, because one
        push of many items rang only once."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(self.doorbell_key, "1")
        pipe.ltrim(self.doorbell_key, 0, 0)
        await pipe.execute()

    # ------------------------------------------------------------------ inspection

    async def size(self) -> int:
        return int(await self.redis.llen(self.name))

    async def dead_size(self) -> int:
        return int(await self.redis.llen(self.dead_key))

    async def holders(self) -> list[str]:
        """Every consumer whose processing list may hold items: the registry, plus the
        registered consumers (a consumer of an older version is only there)."""
        return [consumer for consumer, _ in await self.processing_lists() if consumer]

    async def processing_lists(self) -> list[tuple[str, str]]:
        """(consumer id, key) of every processing list that may hold items: those of the
        registries, and (consumer id '') those of the previous release's names, which the
        reaper is still to move (``reap_legacy``). One round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for key in (self.holders_key, self.consumers_key):
            pipe.zrange(key, 0, -1)
        for key in (self.legacy["holders"], self.legacy["consumers"]):
            pipe.zrange(key, 0, -1)
        holders, consumers, old_holders, old_consumers = await pipe.execute()
        current = sorted({_text(m) for m in [*holders, *consumers]})
        old = sorted({_text(m) for m in [*old_holders, *old_consumers]})
        return [(c, self.processing_key(c)) for c in current] + [
            ("", self.legacy["processing"] + c) for c in old
        ]

    async def processing_size(self) -> int:
        """Items held by consumers: two round trips, whatever else is stored in Redis."""
        lists = await self.processing_lists()
        if not lists:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for _, key in lists:
            pipe.llen(key)
        return sum(int(n) for n in await pipe.execute())

    async def dead_letters(self, start: int = 0, count: int = 100) -> list[Item]:
        """Dead letters, oldest first."""
        raws = await self.redis.lrange(self.dead_key, -(start + count), -(start + 1))
        return [item_format.decode_stored(raw) for raw in reversed(raws)]

    # ------------------------------------------------------------------ operators and reaper

    async def requeue_dead(self, count: int = 0) -> int:
        """Move dead letters (oldest first; 0 = all) back to the queue with attempts reset."""
        return int(await self._requeue_dead(keys=[self.dead_key, self.name], args=[count]))

    async def reap(self) -> ReapResult:
        """Return the items of consumers whose heartbeat expired, and of unregistered holders
        one timeout after they were found so. Safe to run anywhere, often: when nobody needs
        reaping (the usual case) it is one read-only script call of O(consumers), plus one
        round trip of EXISTS for keys of the previous release (``reap_legacy``)."""
        result = await self.reap_registry(self.consumers_key, self.holders_key, self.processing_key)
        try:
            result = result + await self.reap_legacy()
        except ResponseError as exc:
            # A Cluster node answers MOVED for an old name of another slot; an old name only
            # exists on the single Redis the previous release ran on, so there is nothing to
            # move, and the reaping above must not be lost to it. Anything else (a refused
            # command) would leave the old names unread: say so.
            moved = str(exc).startswith("MOVED")
            log.log(
                logging.DEBUG if moved else logging.WARNING,
                "previous release's keys not read",
                extra={"error": str(exc)},
            )
        if result.consumers:
            log.warning(
                "reaped dead consumers",
                extra={
                    "queue": self.name,
                    "consumers": result.consumers,
                    "returned": result.returned,
                    "dead_lettered": result.dead,
                },
            )
        return result

    async def reap_registry(
        self, consumers: str, holders: str, processing: Callable[[str], str]
    ) -> ReapResult:
        """One reaping pass over a registry: this release's, or the previous release's
        (``queuelegacy``), whose processing lists ``processing`` names."""
        timeout_ms = int(self.heartbeat_timeout * 1000)
        raw_ids = await self._reap_candidates(keys=[consumers, holders], args=[timeout_ms])
        ids = [_text(i) for i in raw_ids]
        if not ids:
            return ReapResult(0, 0, 0)
        returned, dead, reaped = await self._reap(
            keys=[self.name, consumers, self.dead_key, holders, *(processing(i) for i in ids)],
            args=[timeout_ms, self.max_attempts, self.name, *ids],
        )
        return ReapResult(int(returned), int(dead), int(reaped))

    async def reap_legacy(self) -> ReapResult:
        """Move what the previous release's names still hold to this release's keys
        (``queuelegacy.reap_legacy``)."""
        return await queuelegacy.reap_legacy(self)

    async def adopt_unregistered(self, scan_count: int = 1000) -> int:
        """Register processing lists the registry does not know (``queuelegacy``)."""
        added = await queuelegacy.adopt_unregistered(self, scan_count)
        if added:
            log.warning(
                "adopted unregistered processing lists", extra={"queue": self.name, "lists": added}
            )
        return added

    def consumer(self, consumer_id: str) -> Consumer:
        return Consumer(self, consumer_id)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


async def wait_for_doorbells(redis: Redis, queues: Sequence[ReliableQueue], timeout: float) -> bool:
    """Block until one of ``queues`` (made with ``doorbell=True``) was pushed to since its
    doorbell was last taken, or ``timeout`` seconds pass; True when a doorbell rang. A token
    left from before makes this return at once, so a push between the caller's last look and
    this call is never slept through."""
    return await redis.blpop([q.doorbell_key for q in queues], timeout=timeout) is not None
