"""The suppression list in Redis: the Lua that writes entries (shared by the scripts that push
the events causing them), batched look-ups, and the operator's operations (get, list, import,
delete). Layout and packing: :mod:`manycore_common.suppression`.

Writes go through ``OPS_LUA``: an op is seven ARGV values — index in KEYS of the bucket,
index in KEYS of the soft-bounce counter (0: none), the address (field), the packed entry,
the scope (field of the size counter, ``KEYS[size]``), the threshold (0: suppress at once;
n: only at the n-th soft bounce in the window) and the window in seconds. A new entry adds
one to the scope's size; an existing live one keeps its first time, and the later expiry
(with its reason and source) wins, so a manual or complaint entry that never expires is not
shortened by a later hard bounce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from . import events, replicas
from . import suppression as s
from .queue import ReliableQueue
from .suppressionlookup import HeldScript, PendingLookup

OP_WIDTH = 7
#: Most entries of one ``import_entries`` call: a record names its bucket by its index in
#: KEYS in two octets.
MAX_IMPORT = 65_000

OPS_LUA = """
local function supp_put(bucket, field, value)
  local old = redis.call('HGET', bucket, field)
  if old then
    local now = struct.unpack('>I4', value, 6)
    local old_exp = struct.unpack('>I4', old, 10)
    if old_exp > now then
      if struct.unpack('>I4', value, 10) >= old_exp then
        value = string.sub(value, 1, 1) .. string.sub(old, 2, 5) .. string.sub(value, 6)
      else
        value = string.sub(old, 1, 5) .. string.sub(value, 6, 9) .. string.sub(old, 10)
      end
    end
    redis.call('HSET', bucket, field, value)
    return 0
  end
  redis.call('HSET', bucket, field, value)
  return 1
end
local function supp_op(size_key, i)
  local bucket, field, value = KEYS[tonumber(ARGV[i])], ARGV[i + 2], ARGV[i + 3]
  local threshold = tonumber(ARGV[i + 5])
  if threshold > 0 then
    local counter = KEYS[tonumber(ARGV[i + 1])]
    local n = redis.call('INCR', counter)
    if n == 1 then redis.call('EXPIRE', counter, tonumber(ARGV[i + 6])) end
    if n < threshold then return 0 end
    redis.call('DEL', counter)
  end
  if supp_put(bucket, field, value) == 0 then return 0 end
  redis.call('HINCRBY', size_key, ARGV[i + 4], 1)
  return 1
end
"""

# KEYS: size, the records' buckets. ARGV: the scope, records → entries added. A bulk import
# in two arguments however many entries: redis-py spends microseconds on every argument, and
# a million imported entries would otherwise cost more in packing than in Redis. A record is
# bucket (its index in KEYS, 2 octets BE) | address length (2 octets BE) | address | value
# length (1 octet) | value.
_IMPORT = (
    OPS_LUA
    + """
local blob, pos, added = ARGV[2], 1, 0
while pos <= #blob do
  local bucket = KEYS[struct.unpack('>I2', blob, pos)]
  local alen = struct.unpack('>I2', blob, pos + 2)
  local address = string.sub(blob, pos + 4, pos + 3 + alen)
  pos = pos + 4 + alen
  local vlen = string.byte(blob, pos)
  added = added + supp_put(bucket, address, string.sub(blob, pos + 1, pos + vlen))
  pos = pos + 1 + vlen
end
if added > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], added) end
return added
"""
)

# KEYS: size, keys of the ops. ARGV: ops → entries added.
_ADD = (
    OPS_LUA
    + """
local added = 0
for i = 1, #ARGV, 7 do added = added + supp_op(KEYS[1], i) end
return added
"""
)

# KEYS: buckets. ARGV: the addresses, one per bucket, each after its length (2 octets, big
# endian) → the entries (nil where none). One command for a whole batch: redis-py spends far
# longer on each command of a pipeline, and on each argument, than Redis does.
_LOOKUP = """
local blob, pos, out = ARGV[1], 1, {}
for i = 1, #KEYS do
  local alen = struct.unpack('>I2', blob, pos)
  out[i] = redis.call('HGET', KEYS[i], string.sub(blob, pos + 2, pos + 1 + alen)) or false
  pos = pos + 2 + alen
end
return out
"""

# KEYS: size, buckets. ARGV: per bucket: the address, the scope → entries removed.
_DELETE = """
local removed = 0
for i = 2, #KEYS do
  local f, scope = ARGV[2 * i - 3], ARGV[2 * i - 2]
  if redis.call('HDEL', KEYS[i], f) == 1 then
    removed = removed + 1
    if redis.call('HINCRBY', KEYS[1], scope, -1) <= 0 then redis.call('HDEL', KEYS[1], scope) end
  end
end
return removed
"""

# KEYS: a range of one scope's buckets, in order. ARGV: the number of the first, most
# entries → {next bucket (-1: done), field, value, field, ...}. Stops after the bucket that
# reaches the most entries.
_SCAN = """
local out, n, i = {}, 0, 1
while i <= #KEYS and n < tonumber(ARGV[2]) do
  local all = redis.call('HGETALL', KEYS[i])
  for j = 1, #all do out[#out + 1] = all[j] end
  n = n + #all / 2
  i = i + 1
end
local b = tonumber(ARGV[1]) + i - 1
if b > 65535 then b = -1 end
table.insert(out, 1, b)
return out
"""


# KEYS: size, a range of one scope's buckets. ARGV: scope, now → entries removed. Drops the
# expired entries of those buckets.
_PURGE = """
local removed, now = 0, tonumber(ARGV[2])
for i = 2, #KEYS do
  local all = redis.call('HGETALL', KEYS[i])
  for j = 1, #all, 2 do
    if struct.unpack('>I4', all[j + 1], 10) <= now then
      removed = removed + redis.call('HDEL', KEYS[i], all[j])
    end
  end
end
if removed > 0 and redis.call('HINCRBY', KEYS[1], ARGV[1], -removed) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return removed
"""


def bucket_range(scope: str, first: int, most: int) -> list[bytes]:
    """The keys of ``scope``'s buckets ``first`` .. (at most ``most`` of them), as bytes:
    a listing passes thousands, and redis-py encodes a str argument on every call."""
    head = s.bucket_name(scope, 0)[:-4].encode()  # the names differ only in their last four
    return [head + b"%04x" % b for b in range(first, min(s.BUCKETS, first + most))]


@dataclass(frozen=True, slots=True)
class Op:
    """One entry to write (or, with a threshold, one soft bounce to count)."""

    scope: str
    address: str
    entry: s.Entry
    threshold: int = 0
    window: int = 0

    def keys(self) -> list[str]:
        bucket = s.bucket_key(self.scope, self.address)
        return [bucket, s.soft_key(self.scope, self.address)] if self.threshold else [bucket]


def encode_ops(ops: Iterable[Op], first_key: int) -> tuple[list[str], list[bytes | str | int]]:
    """(KEYS to append, ARGV to append) for ``ops``; ``first_key`` is the 1-based index the
    first appended key will have in KEYS."""
    keys: list[str] = []
    args: list[bytes | str | int] = []
    for op in ops:
        op_keys = op.keys()
        bucket = first_key + len(keys)
        soft = bucket + 1 if op.threshold else 0
        keys += op_keys
        args += [bucket, soft, op.address, s.pack(op.entry), op.scope, op.threshold, op.window]
    return keys, args


def by_scope(ops: Iterable[Op]) -> dict[str, list[tuple[str, bytes]]]:
    """(address, packed entry) per scope; an entry shared by many ops is packed once."""
    packed: dict[s.Entry, bytes] = {}
    out: dict[str, list[tuple[str, bytes]]] = {}
    for op in ops:
        value = packed.get(op.entry)
        if value is None:
            value = packed[op.entry] = s.pack(op.entry)
        out.setdefault(op.scope, []).append((op.address, value))
    return out


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def lookup_request(queries: Iterable[tuple[str, str]]) -> tuple[list[bytes], bytes]:
    """The look-up script's KEYS (each query's bucket, ``s.bucket_key``) and its one argument
    (the addresses, each after its length in 2 octets), as bytes. Made for every batch the
    Transformer signs: each scope's key prefix is formatted once, and a bucket's four hex
    digits are the first two octets of the address's SHA-1 (``s.bucket_of``)."""
    heads: dict[str, bytes] = {}
    keys: list[bytes] = []
    parts: list[bytes] = []
    for scope, address in queries:
        head = heads.get(scope)
        if head is None:
            head = heads[scope] = s.bucket_name(scope, 0)[:-4].encode()
        raw = address.encode("utf-8")
        keys.append(head + hashlib.sha1(raw, usedforsecurity=False).digest()[:2].hex().encode())
        parts += (len(raw).to_bytes(2, "big"), raw)
    return keys, b"".join(parts)


class SuppressionStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._add = redis.register_script(_ADD)
        self._import = redis.register_script(_IMPORT)
        self._lookup = HeldScript(redis, redis.register_script(_LOOKUP))
        self._delete = redis.register_script(_DELETE)
        self._scan = redis.register_script(_SCAN)
        self._purge = redis.register_script(_PURGE)

    async def lookup(
        self, queries: Sequence[tuple[str, str]], now: float
    ) -> list[tuple[str, s.Entry] | None]:
        """For each (scope, normalised address): (scope, live entry) or None; one script call
        for the whole batch."""
        return await (await self.send_lookup(queries)).found(now)

    async def send_lookup(self, queries: Sequence[tuple[str, str]]) -> PendingLookup:
        """``lookup`` in two steps: the call is written when this returns, and its reply is
        read by ``found`` (or the connection given up by ``abandon``)."""
        sent = await self._lookup.send(*lookup_request(queries)) if queries else None
        return PendingLookup(queries, sent)

    async def add(self, ops: Sequence[Op], chunk: int = 1000) -> int:
        """Write entries, ``chunk`` per script call; returns how many were new."""
        added = 0
        for start in range(0, len(ops), chunk):
            keys, args = encode_ops(ops[start : start + chunk], 2)
            added += int(await self._add(keys=[s.size_key(), *keys], args=args))
        return added

    async def import_entries(self, scope: str, entries: Sequence[tuple[str, bytes]]) -> int:
        """Write (normalised address, packed entry) pairs under one scope in one script call;
        returns how many were new."""
        if not entries:
            return 0
        if len(entries) > MAX_IMPORT:
            raise ValueError(f"import_entries takes at most {MAX_IMPORT} entries per call")
        buckets: dict[int, int] = {}
        records = []
        for address, value in entries:
            raw = address.encode("utf-8")
            index = buckets.setdefault(s.bucket_of(address), len(buckets) + 2)
            records += [index.to_bytes(2, "big"), len(raw).to_bytes(2, "big"), raw]
            records += [bytes((len(value),)), value]
        keys = [s.size_key(), *(s.bucket_name(scope, b) for b in buckets)]
        return int(await self._import(keys=keys, args=[scope, b"".join(records)]))

    async def add_entries(self, ops: Sequence[Op], chunk: int = 2000) -> int:
        """``add`` for ops without a threshold (imports), through ``import_entries``."""
        added = 0
        for scope, entries in by_scope(ops).items():
            for start in range(0, len(entries), chunk):
                added += await self.import_entries(scope, entries[start : start + chunk])
        return added

    async def purge(self, scope: str, now: float, max_buckets: int = 2048) -> int:
        """Remove the expired entries of ``scope`` (they no longer suppress, but hold memory
        until then); several short script calls. Returns how many were removed."""
        removed = 0
        for first in range(0, s.BUCKETS, max_buckets):
            keys: list[str | bytes] = [s.size_key(), *bucket_range(scope, first, max_buckets)]
            removed += int(await self._purge(keys=keys, args=[scope, int(now)]))
        return removed

    async def delete(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Remove (scope, address) entries; returns how many existed."""
        if not pairs:
            return 0
        keys = [s.bucket_key(scope, address) for scope, address in pairs]
        args = [x for scope, address in pairs for x in (address, scope)]
        return int(await self._delete(keys=[s.size_key(), *keys], args=args))

    async def get(self, scopes: Sequence[str], address: str, now: float) -> list[dict[str, object]]:
        found = await self.lookup([(scope, address) for scope in scopes], now)
        return [entry.as_json(address, scope) for scope, entry in filter(None, found)]

    async def scopes(self) -> dict[str, int]:
        raw = await self.redis.hgetall(s.size_key())
        return {_bytes(k).decode(): int(v) for k, v in raw.items()}

    async def size(self) -> int:
        return sum((await self.scopes()).values())

    async def page(
        self,
        scope: str,
        cursor: int,
        limit: int,
        now: float,
        reason: s.Reason | None = None,
        max_buckets: int = 4096,
    ) -> tuple[list[dict[str, object]], int | None]:
        """Live entries of ``scope`` from bucket ``cursor`` on: (entries, next cursor or None
        when done). Whole buckets, so a page may pass ``limit`` by one bucket's entries (a
        few); ``max_buckets`` bounds the work of one call in a sparse scope."""
        entries: list[dict[str, object]] = []
        following, scanned = cursor, 0
        # Several short scripts rather than one long one: Redis serves others in between. A
        # filter that matches little reads at most ten pages' worth, then answers with what
        # it has and the cursor.
        while following >= 0 and len(entries) < limit and scanned < 10 * limit:
            raw = await self._scan(
                keys=bucket_range(scope, following, max_buckets),
                args=[following, limit - len(entries)],
            )
            following = int(raw[0])
            scanned += len(raw) // 2
            for i in range(1, len(raw), 2):
                entry = s.unpack(_bytes(raw[i + 1]))
                if entry.active(now) and (reason is None or entry.reason == reason):
                    entries.append(entry.as_json(_bytes(raw[i]).decode(), scope))
        return entries, None if following < 0 else following


# KEYS: event queue, size, once-keys (n), the ops' keys. ARGV: TTL, n, one event item per
# once-key, then per op: the 1-based number of its event, and the op's seven values → how
# many events were pushed. ``events.emit_once_many`` with each event's suppression entries
# written by the same script, and only when the event itself is pushed.
_EMIT_ONCE_SUPPRESSING = (
    OPS_LUA
    + """
local n = tonumber(ARGV[2])
local pushed, done = 0, {}
for i = 1, n do
  if redis.call('SET', KEYS[2 + i], '1', 'NX', 'EX', tonumber(ARGV[1])) then
    redis.call('LPUSH', KEYS[1], ARGV[2 + i])
    pushed = pushed + 1
    done[i] = true
  end
end
for i = 3 + n, #ARGV, 8 do
  if done[tonumber(ARGV[i])] then supp_op(KEYS[2], i + 1) end
end
return pushed
"""
)


async def emit_once_suppressing(
    queue: ReliableQueue,
    keyed_events: Sequence[tuple[str, dict[str, Any]]],
    ops: Sequence[Sequence[Op]],
    *,
    source: str,
    ttl: int,
) -> int:
    """``events.emit_once_many`` where ``ops[i]`` are the suppression entries event ``i``
    calls for, written in the same script when (and only when) that event is pushed."""
    if not keyed_events:
        return 0
    n = len(keyed_events)
    keys = [queue.name, s.size_key(), *(key for key, _ in keyed_events)]
    args: list[bytes | str | int] = [ttl, n]
    args += [events.encode_event(e, source=source) for _, e in keyed_events]
    for number, event_ops in enumerate(ops, start=1):
        for op in event_ops:
            op_keys, op_args = encode_ops([op], len(keys) + 1)
            keys += op_keys
            args += [number, *op_args]
    script = queue.redis.register_script(_EMIT_ONCE_SUPPRESSING)
    # Acknowledged once a replica has it, as ``events.emit_once_many`` is.
    return int(await replicas.call(queue.redis, script, keys, args))
