"""The reliable queue (docs/ARCHITECTURE.md#queues): nothing acknowledged is lost, hand-over is
atomic, poison is quarantined. Built on Redis lists with the "reliable queue" pattern (BLMOVE into a
list owned by the consumer) plus heartbeats, a reaper and a delivery counter.

Key layout, for a queue named ``Q`` (the name from the global config, e.g. ``IB-MAIL-QUEUE-P0``):

``Q`` (LIST)
    Waiting items. Producers LPUSH; consumers take from the right, so the oldest item goes
    first (FIFO). Its length is what the README's queue gauges report.
``Q:processing:<consumer>`` (LIST)
    Items one consumer holds. ``BLMOVE Q … RIGHT LEFT`` moves an item here atomically; it
    leaves only by ack (LREM), hand-over (LREM + LPUSH to the next queue, one script), retry,
    dead-letter, release, or the reaper.
``Q:consumers`` (ZSET)
    Consumer id → last heartbeat, in Redis server time (ms), so client clocks do not matter.
``Q:holders`` (ZSET)
    The registry of processing lists: every consumer whose ``Q:processing:<id>`` may hold
    items is here, so the reaper, ``processing_size`` and the exporter read this set (and
    ``Q:consumers``) instead of scanning the keyspace; their cost grows with the consumers,
    not with the keys in Redis. Score 0: the consumer is taking (every take sets it before
    or with the move: in the same pipelined round trip as BLMOVE, in the same script as the
    batch take). Score T > 0: the consumer has had no heartbeat entry since T (server ms;
    set by the reaper or a graceful release). A consumer without a heartbeat entry keeps its
    items for one heartbeat timeout after T (it may be alive and about to register again);
    then the reaper returns them and forgets the consumer. The heartbeat does not touch it:
    only taking can fill a processing list.
``Q:dead`` (LIST)
    Dead letters: the item with ``dead`` = {reason, at, queue} added to its header; newest at
    the left.
``Q:doorbell`` (LIST, at most one token)
    Only for queues made with ``doorbell=True`` (P0 and P1): set by every push, in the push
    script, so that a consumer of both blocks on both at once (``wait_for_doorbells``).
``idem:<hash>`` (STRING, with a TTL)
    Not one queue's: the claim of a submitted message (``manycore_common.idempotency``),
    set by ``push_claimed`` in the same script as the push, so two concurrent submissions
    of one message queue exactly one, and a refused push (queue full, Redis error) leaves
    no claim. A group-commit batch passes all its claims in KEYS: on Redis Cluster they
    would need the queues' hash tag (every claim then on the queues' slot, which is where
    the front doors' writes all go today anyway).

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
* An item whose attempts reach ``max_attempts`` goes to ``Q:dead`` with its reason instead of
  back to ``Q``; an operator lists and requeues dead letters (``manycore-queues``).
* Producers are refused (``QueueFull``) above the high-water mark, so backpressure reaches the
  client as an SMTP 451 / HTTP 503 instead of Redis running out of memory.

No script builds a key name: every key a script touches is in its KEYS (the reaper first
reads which consumers need attention, then passes their processing lists). The keys do not
carry a hash tag yet, so one queue's keys are not in one Redis Cluster slot; a later change can
name the side keys ``{Q}:…`` (same slot as ``Q``) without renaming the queue itself.

Processing lists made by a version without the registry are adopted once by
``ReliableQueue.adopt_unregistered`` (``manycore-redis`` runs it at start; ``manycore-queues
adopt`` on demand): the only SCAN left, never on a consumer's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import item as item_format
from . import replicas
from .item import Item

if TYPE_CHECKING:
    from .config import GlobalReliableQueue
    from .idempotency import Claim

log = logging.getLogger(__name__)

# Helpers shared by the scripts that rewrite a header. ``split`` returns nil for bytes that
# are not an item; such bytes are wrapped into a fresh header so they can still be dead-lettered
# (and inspected) instead of being lost or crashing the script.
_LUA_HELPERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function split(raw)
  local nl = string.find(raw, '\\n', 1, true)
  if not nl then return nil, nil end
  local ok, header = pcall(cjson.decode, string.sub(raw, 1, nl - 1))
  if not ok or type(header) ~= 'table' then return nil, nil end
  return header, string.sub(raw, nl + 1)
end
local function wrap_corrupt(raw)
  return {v = 1, corrupt = true, attempts = 0}, raw
end
local function join(header, payload)
  return cjson.encode(header) .. '\\n' .. payload
end
-- One failed delivery: returns the rewritten item and whether it is now dead.
local function bump(raw, reason, max_attempts, queue, now)
  local header, payload = split(raw)
  if not header then header, payload = wrap_corrupt(raw); reason = 'corrupt item: ' .. reason end
  header.attempts = (tonumber(header.attempts) or 0) + 1
  if header.attempts >= max_attempts or header.corrupt then
    header.dead = {reason = reason, at = now, queue = queue}
    return join(header, payload), true
  end
  return join(header, payload), false
end
"""

# KEYS: queue. ARGV: high-water mark (0 = none), items... → new length, or -1 when full.
_PUSH = """
local hwm = tonumber(ARGV[1])
if hwm > 0 and redis.call('LLEN', KEYS[1]) >= hwm then return -1 end
local length = redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
if KEYS[2] then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return length
"""

# KEYS: queue[, doorbell], claims... ARGV: high-water mark (0 = none), claim TTL seconds,
# 1 when KEYS[2] is the doorbell else 0, then per item: its claim's value ('' = no claim; the
# claims in KEYS in the same order) and the item → {new length, or -1 when full; then per
# item '' (pushed) or the value its claim already held (a duplicate, not pushed)}.
# Nothing is written before the checks that could refuse the push (the queue's type, the
# high-water mark), so a refused push leaves no claim; when full, claims are only read,
# so a duplicate of a message queued earlier is still told apart from a new one. A Redis
# above maxmemory fails the first SET, before anything was written, and lets a script that
# has written finish. Items claiming one key in one call: the first is pushed.
_PUSH_CLAIMED = """
local hwm, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local doorbell = ARGV[3] == '1'
local k = doorbell and 3 or 2
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the queue is not a list')
end
local full = hwm > 0 and redis.call('LLEN', KEYS[1]) >= hwm
local out, fresh = {0}, {}
for i = 4, #ARGV, 2 do
  local earlier = false
  if ARGV[i] ~= '' then
    local key = KEYS[k]
    k = k + 1
    if full or not redis.call('SET', key, ARGV[i], 'NX', 'EX', ttl) then
      earlier = redis.pcall('GET', key)
      -- Not a string (someone else's key): still a duplicate, answered as a default one.
      if type(earlier) == 'table' then earlier = '?'
      elseif earlier and not full then
        -- Rewrite it as it is: a write after the first submission's, so that a WAIT that
        -- follows this call (a replica ack) also covers the message the claim stands for.
        redis.call('SET', key, earlier, 'KEEPTTL')
      end
    end
  end
  if earlier then
    out[#out + 1] = earlier
  else
    out[#out + 1] = ''
    fresh[#fresh + 1] = ARGV[i + 1]
  end
end
if full then
  out[1] = -1
elseif #fresh > 0 then
  out[1] = redis.call('LPUSH', KEYS[1], unpack(fresh))
  if doorbell then
    redis.call('LPUSH', KEYS[2], '1')
    redis.call('LTRIM', KEYS[2], 0, 0)
  end
else
  out[1] = redis.call('LLEN', KEYS[1])
end
return out
"""

# KEYS: queue, processing, holders. ARGV: most items, consumer id → the items moved, oldest
# first. One call that stops at an empty queue, where a pipeline of LMOVEs always sent (and
# parsed) all of them: taking one item with room for 50 cost half a millisecond of client CPU.
# A take that moved something registers the processing list (score 0: taking) in the same step.
_TAKE_MANY = """
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not raw then break end
  out[#out + 1] = raw
end
if #out > 0 then redis.call('ZADD', KEYS[3], 0, ARGV[2]) end
return out
"""

# KEYS: processing. ARGV: items → how many were still held.
_ACK_MANY = """
local n = 0
for _, raw in ipairs(ARGV) do n = n + redis.call('LREM', KEYS[1], 1, raw) end
return n
"""

# KEYS: processing, target. ARGV: pairs of (held item, item for target) → number handed over.
_HAND_OVER = """
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
"""

# KEYS: processing, target. ARGV: per held item: the item, n, then its n new items (n ≥ 1)
# → {held items handed over, new items pushed}. One held item becomes several (the
# Transformer's one copy per recipient): it is removed once and all its new items are pushed,
# or (not held any more) none. The target's type is checked first, so the LPUSHes that
# follow the LREM cannot fail (a script is not rolled back), and once it has written Redis
# lets it finish even past maxmemory. LPUSH takes at most 500 at a time (Lua's unpack).
_HAND_OVER_SPLIT = """
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the target queue is not a list')
end
local moved, pushed, i = 0, 0, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  local last = i + 1 + n
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    for first = i + 2, last, 500 do
      redis.call('LPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 499, last)))
    end
    moved, pushed = moved + 1, pushed + n
  end
  i = last + 1
end
return {moved, pushed}
"""

# KEYS: processing, queue, dead. ARGV: item, reason, max attempts, queue name
# → 'gone' (not held any more), 'requeued' or 'dead'.
_RETRY = (
    _LUA_HELPERS
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 'gone' end
local new, dead = bump(ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], now_ms())
if dead then
  redis.call('LPUSH', KEYS[3], new)
  return 'dead'
end
-- Back of the line: a failing item must not block the ones behind it.
redis.call('LPUSH', KEYS[2], new)
return 'requeued'
"""
)

# KEYS: processing, dead[, event queue]. ARGV: item, reason, queue name[, event item]
# → 1 if dead-lettered, 0 if not held. The optional event (an `error` event saying why) is
# pushed in the same script, so there is never a dead letter without its event or the reverse.
_DEAD_LETTER = (
    _LUA_HELPERS
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local header, payload = split(ARGV[1])
if not header then header, payload = wrap_corrupt(ARGV[1]) end
header.dead = {reason = ARGV[2], at = now_ms(), queue = ARGV[3]}
redis.call('LPUSH', KEYS[2], join(header, payload))
if KEYS[3] then redis.call('LPUSH', KEYS[3], ARGV[4]) end
return 1
"""
)

# KEYS: consumers. ARGV: consumer id → server time in ms.
_HEARTBEAT = (
    _LUA_HELPERS
    + """
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
return now
"""
)

# Return what a dead consumer held: each item counts one failed attempt and goes back to the
# right end of the queue (served next), or to the dead-letter list once out of attempts.
_LUA_RETURN_HELD = """
local function return_held(queue, dead_key, pkey, consumer, max_attempts, queue_name, now)
  local held = redis.call('LRANGE', pkey, 0, -1)
  local returned, dead = 0, 0
  -- held[1] is the newest; pushing newest first leaves the oldest at the right end.
  for _, raw in ipairs(held) do
    local new, is_dead = bump(raw, 'consumer ' .. consumer .. ' stopped heartbeating',
                              max_attempts, queue_name, now)
    if is_dead then
      redis.call('LPUSH', dead_key, new)
      dead = dead + 1
    else
      redis.call('RPUSH', queue, new)
      returned = returned + 1
    end
  end
  redis.call('DEL', pkey)
  return returned, dead
end
"""

# KEYS: consumers, holders. ARGV: heartbeat timeout ms → the consumers the reaper must look
# at: registered ones whose heartbeat expired, and unregistered holders that are either not
# marked yet (score 0) or marked longer than the timeout ago. Reads only: the reaper passes
# their processing lists to _REAP, so no script derives a key name. O(consumers).
_REAP_CANDIDATES = (
    _LUA_HELPERS
    + """
local now = now_ms()
local limit = now - tonumber(ARGV[1])
local out = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', limit)
local holders = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #holders, 2 do
  local mark = tonumber(holders[i + 1])
  if (mark == 0 or mark <= limit) and not redis.call('ZSCORE', KEYS[1], holders[i]) then
    out[#out + 1] = holders[i]
  end
end
return out
"""
)

# KEYS: queue, consumers, dead, holders, processing lists... ARGV: timeout ms, max attempts,
# queue name, consumer ids... (one per processing list, same order)
# → {items returned, items dead-lettered, consumers reaped}. Every condition is checked again
# here, atomically: the candidates were read a round trip ago.
_REAP = (
    _LUA_HELPERS
    + _LUA_RETURN_HELD
    + """
local now = now_ms()
local limit = now - tonumber(ARGV[1])
local max_attempts = tonumber(ARGV[2])
local returned, dead, reaped = 0, 0, 0
for i = 4, #ARGV do
  local consumer, pkey = ARGV[i], KEYS[i + 1]
  local beat = redis.call('ZSCORE', KEYS[2], consumer)
  local mark = redis.call('ZSCORE', KEYS[4], consumer)
  if beat then
    if tonumber(beat) <= limit then
      -- Presumed dead: its items go back now; it stays a holder (marked) for one more
      -- timeout, in case it is alive and takes again before it registers.
      local r, d = return_held(KEYS[1], KEYS[3], pkey, consumer, max_attempts, ARGV[3], now)
      returned, dead, reaped = returned + r, dead + d, reaped + 1
      redis.call('ZREM', KEYS[2], consumer)
      redis.call('ZADD', KEYS[4], now, consumer)
    end
  elseif mark and tonumber(mark) == 0 then
    redis.call('ZADD', KEYS[4], now, consumer)
  elseif mark and tonumber(mark) <= limit then
    -- Unregistered for a whole timeout, yet it took after it was reaped (or it is a list
    -- adopted from an older version): return what it holds and forget it. No take of it can
    -- still be under way: each take sets the score to 0 first, and a blocking take lasts
    -- at most half a timeout.
    local r, d = return_held(KEYS[1], KEYS[3], pkey, consumer, max_attempts, ARGV[3], now)
    returned, dead = returned + r, dead + d
    if r + d > 0 then reaped = reaped + 1 end
    redis.call('ZREM', KEYS[4], consumer)
  end
end
return {returned, dead, reaped}
"""
)

# KEYS: processing, queue. ARGV: items → how many were returned. Items a live consumer has in
# its list but does not know it holds (a BLMOVE whose reply was lost); not their fault, so no
# attempt is counted.
_RETURN_STRAYS = """
local n = 0
for _, raw in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, raw) == 1 then
    redis.call('RPUSH', KEYS[2], raw)
    n = n + 1
  end
end
return n
"""

# KEYS: processing, queue, consumers, holders. ARGV: consumer id → items returned. A graceful
# stop: the items were not at fault, so no attempt is counted; they go to the front of the
# line. The holder entry is marked, not removed: should a take of this consumer still be under
# way, the reaper returns what it moves instead of it sitting in an unknown list.
_RELEASE = (
    _LUA_HELPERS
    + """
local held = redis.call('LRANGE', KEYS[1], 0, -1)
for _, raw in ipairs(held) do redis.call('RPUSH', KEYS[2], raw) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], now_ms(), ARGV[1])
return #held
"""
)

# KEYS: dead, queue. ARGV: count (0 = all) → items requeued. Oldest dead letters first;
# the attempt counter starts again from zero.
_REQUEUE_DEAD = (
    _LUA_HELPERS
    + """
local n = tonumber(ARGV[1])
if n <= 0 then n = redis.call('LLEN', KEYS[1]) end
local moved = 0
for i = 1, n do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  local header, payload = split(raw)
  if header and header.corrupt then
    redis.call('LPUSH', KEYS[2], payload)
  elseif header then
    header.dead = nil
    header.attempts = 0
    redis.call('LPUSH', KEYS[2], join(header, payload))
  else
    redis.call('LPUSH', KEYS[2], raw)
  end
  moved = moved + 1
end
return moved
"""
)


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
    ) -> None:
        self.redis = redis
        self.name = name
        self.max_attempts = max_attempts
        self.heartbeat_timeout = heartbeat_timeout
        self.high_water_mark = high_water_mark
        self.consumers_key = f"{name}:consumers"
        self.holders_key = f"{name}:holders"
        self.dead_key = f"{name}:dead"
        #: With ``doorbell``, every push also leaves one token in this list, in the same
        #: script: a consumer of several queues blocks on all their doorbells at once
        #: (BLPOP takes many keys, BLMOVE only one) instead of polling them in turn. Only a
        #: wake-up: items that come back another way (reaper, requeue) wait for the
        #: consumer's next look, bounded by its wait timeout.
        self.doorbell_key = f"{name}:doorbell"
        self._push_keys = [name, self.doorbell_key] if doorbell else [name]
        self._push = redis.register_script(_PUSH)
        self._push_claimed = redis.register_script(_PUSH_CLAIMED)
        self._take_many = redis.register_script(_TAKE_MANY)
        self._hand_over = redis.register_script(_HAND_OVER)
        self._ack_many = redis.register_script(_ACK_MANY)
        self._retry = redis.register_script(_RETRY)
        self._dead_letter = redis.register_script(_DEAD_LETTER)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._reap_candidates = redis.register_script(_REAP_CANDIDATES)
        self._reap = redis.register_script(_REAP)
        self._return_strays = redis.register_script(_RETURN_STRAYS)
        self._release = redis.register_script(_RELEASE)
        self._requeue_dead = redis.register_script(_REQUEUE_DEAD)

    def processing_key(self, consumer_id: str) -> str:
        return f"{self.name}:processing:{consumer_id}"

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
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(self.holders_key, 0, -1)
        pipe.zrange(self.consumers_key, 0, -1)
        holders, consumers = await pipe.execute()
        return sorted({_text(m) for m in [*holders, *consumers]})

    async def processing_size(self) -> int:
        """Items held by consumers: two round trips, whatever else is stored in Redis."""
        holders = await self.holders()
        if not holders:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for consumer in holders:
            pipe.llen(self.processing_key(consumer))
        return sum(int(n) for n in await pipe.execute())

    async def dead_letters(self, start: int = 0, count: int = 100) -> list[Item]:
        """Dead letters, oldest first."""
        raws = await self.redis.lrange(self.dead_key, -(start + count), -(start + 1))
        return [_decode_any(raw) for raw in reversed(raws)]

    # ------------------------------------------------------------------ operators and reaper

    async def requeue_dead(self, count: int = 0) -> int:
        """Move dead letters (oldest first; 0 = all) back to the queue with attempts reset."""
        return int(await self._requeue_dead(keys=[self.dead_key, self.name], args=[count]))

    async def reap(self) -> ReapResult:
        """Return the items of consumers whose heartbeat expired, and of unregistered holders
        one timeout after they were found so. Safe to run anywhere, often: when nobody needs
        reaping (the usual case) it is one read-only script call of O(consumers)."""
        timeout_ms = int(self.heartbeat_timeout * 1000)
        raw_ids = await self._reap_candidates(
            keys=[self.consumers_key, self.holders_key], args=[timeout_ms]
        )
        ids = [_text(i) for i in raw_ids]
        if not ids:
            return ReapResult(0, 0, 0)
        returned, dead, consumers = await self._reap(
            keys=[
                self.name,
                self.consumers_key,
                self.dead_key,
                self.holders_key,
                *(self.processing_key(i) for i in ids),
            ],
            args=[timeout_ms, self.max_attempts, self.name, *ids],
        )
        result = ReapResult(int(returned), int(dead), int(consumers))
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

    async def adopt_unregistered(self, scan_count: int = 1000) -> int:
        """Register processing lists the registry does not know (made by a version without
        it): one SCAN of the whole keyspace, so for a migration, never a consumer's loop.
        Safe at any time: an entry only makes the reaper look (it re-checks the heartbeat
        atomically), and NX never touches an entry that exists. Returns how many were new."""
        prefix = f"{self.name}:processing:"
        ids: list[str] = []
        async for key in self.redis.scan_iter(match=_glob_escape(prefix) + "*", count=scan_count):
            ids.append(_text(key)[len(prefix) :])
        if not ids:
            return 0
        added = int(await self.redis.zadd(self.holders_key, dict.fromkeys(ids, 0), nx=True) or 0)
        if added:
            log.warning(
                "adopted unregistered processing lists", extra={"queue": self.name, "lists": added}
            )
        return added

    def consumer(self, consumer_id: str) -> Consumer:
        return Consumer(self, consumer_id)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _decode_any(raw: bytes | str) -> Item:
    if isinstance(raw, str):  # only with decode_responses=True, which we never use
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        return item_format.decode(raw)
    except item_format.ItemFormatError:
        return Item(header={"corrupt": True}, payload=raw, raw=raw)


async def wait_for_doorbells(redis: Redis, queues: Sequence[ReliableQueue], timeout: float) -> bool:
    """Block until one of ``queues`` (made with ``doorbell=True``) was pushed to since its
    doorbell was last taken, or ``timeout`` seconds pass; True when a doorbell rang. A token
    left from before makes this return at once, so a push between the caller's last look and
    this call is never slept through."""
    return await redis.blpop([q.doorbell_key for q in queues], timeout=timeout) is not None


class Consumer:
    """One consumer of one queue: its own processing list, its heartbeat, and the reaper.

    Usage::

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
        return None if raw is None else self._hold([_decode_any(raw)])[0]

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
        return first + self._hold([_decode_any(raw) for raw in raws])

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
        script = self.queue.redis.register_script(_HAND_OVER_SPLIT)
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
