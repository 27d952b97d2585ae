"""Bounded look-ups in the queues for ``manycore-queues`` (docs/ARCHITECTURE.md#dead-letters):
where a uuid is right now, one dead letter by id (peek, drop, requeue), the unclassified list.

Every scan reads a list in LRANGE pages and stops after ``cap`` items per list, and says so:
a queue of millions is never read whole by an operator's command. Items are matched on their
header line only (the payload is never parsed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from . import item as item_format
from .item import Item
from .queue import ReliableQueue

#: Items read per LRANGE page.
PAGE = 500
#: Default most items read per list by one command (``--scan-cap``).
SCAN_CAP = 10_000

# KEYS: dead list, target queue. ARGV: exact dead-letter bytes, bytes to push ('' = drop)
# → 1 done, 0 the dead letter was not there any more (someone else moved it).
_TAKE_DEAD = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('LPUSH', KEYS[2], ARGV[2]) end
return 1
"""


@dataclass
class Scan:
    """Where one list scan found matches, and whether it stopped at the cap."""

    key: str
    found: list[tuple[int, Item]] = field(default_factory=list)
    read: int = 0
    capped: bool = False


def letter_id(item: Item) -> str:
    """An item's id, or for one without (a corrupt item) a stable digest of its bytes."""
    return item.id or "sha-" + hashlib.sha256(item.raw).hexdigest()[:20]


def header_of(raw: bytes) -> dict[str, Any] | None:
    """The header line alone (cheap: no payload copy); None when it is not an item."""
    end = raw.find(b"\n")
    if end < 0:
        return None
    try:
        header = json.loads(raw[:end])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def decode(raw: bytes | str) -> Item:
    if isinstance(raw, str):  # only with decode_responses=True, which we never use
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        return item_format.decode(raw)
    except item_format.ItemFormatError:
        return Item(header={"corrupt": True}, payload=raw, raw=raw)


async def _pages(redis: Redis, key: str, cap: int) -> AsyncIterator[list[bytes]]:
    start = 0
    while start < cap:
        page = await redis.lrange(key, start, min(start + PAGE, cap) - 1)
        if not page:
            return
        yield [p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p for p in page]
        if len(page) < min(PAGE, cap - start):
            return
        start += len(page)


async def scan(
    redis: Redis, key: str, match: Callable[[bytes], bool], cap: int = SCAN_CAP, limit: int = 10
) -> Scan:
    """Items of list ``key`` (from the left, i.e. newest first) for which ``match(raw)``;
    at most ``limit`` matches and ``cap`` items read."""
    result = Scan(key)
    async for page in _pages(redis, key, cap):
        for raw in page:
            if match(raw):
                result.found.append((result.read, decode(raw)))
            result.read += 1
            if len(result.found) >= limit:
                return result
    result.capped = result.read >= cap and int(await redis.llen(key)) > cap
    return result


def by_uuid(uuid: str) -> Callable[[bytes], bool]:
    needle = uuid.encode()

    def match(raw: bytes) -> bool:
        if needle not in raw[: raw.find(b"\n")]:  # cheap filter before JSON
            return False
        header = header_of(raw)
        return header is not None and header.get("uuid") == uuid

    return match


def by_id(wanted: str) -> Callable[[bytes], bool]:
    def match(raw: bytes) -> bool:
        if wanted.startswith("sha-"):
            return letter_id(decode(raw)) == wanted
        header = header_of(raw)
        return header is not None and header.get("id") == wanted

    return match


async def lists_of(queue: ReliableQueue) -> list[tuple[str, str]]:
    """(where, key) for every list of ``queue`` that can hold an item: waiting, each
    processing list in the holders registry, dead letters."""
    lists = await queue.processing_lists()
    return [
        ("waiting", queue.name),
        *(
            (f"processing:{h}" if h else f"processing (previous release) {key}", key)
            for h, key in lists
        ),
        ("dead", queue.dead_key),
    ]


async def locate(
    redis: Redis, queues: list[ReliableQueue], uuid: str, cap: int = SCAN_CAP
) -> list[dict[str, Any]]:
    """Where items of ``uuid`` are right now, one row per list scanned (found or not)."""
    rows = []
    match = by_uuid(uuid)
    for queue in queues:
        for where, key in await lists_of(queue):
            found = await scan(redis, key, match, cap)
            rows.append(
                {
                    "queue": queue.name,
                    "where": where,
                    "read": found.read,
                    "capped": found.capped,
                    "items": [summary(item, index) for index, item in found.found],
                }
            )
    return rows


def summary(item: Item, index: int | None = None) -> dict[str, Any]:
    """What an operator needs to recognise an item, without its payload."""
    found = item.header.get("dead")
    dead: dict[str, Any] = found if isinstance(found, dict) else {}
    row: dict[str, Any] = {
        "id": letter_id(item),
        "uuid": item.uuid,
        "index": index,
        "attempts": item.attempts,
        "enqueued_at": item.header.get("enqueued_at"),
        "rcpts": item.header.get("rcpts"),
        "source": item.header.get("source"),
        "died": dead.get("at"),
        "reason": dead.get("reason"),
        "bytes": len(item.payload),
    }
    return {k: v for k, v in row.items() if v is not None}


async def find_dead(
    redis: Redis, queues: list[ReliableQueue], wanted: str, cap: int = SCAN_CAP
) -> tuple[ReliableQueue | None, Item | None, list[Scan]]:
    """The dead letter with id ``wanted`` in the first queue that has it; the scans say how
    much was read when it is not found."""
    scans = []
    for queue in queues:
        found = await scan(redis, queue.dead_key, by_id(wanted), cap, limit=1)
        scans.append(found)
        if found.found:
            return queue, found.found[0][1], scans
    return None, None, scans


def requeued(item: Item) -> bytes:
    """The bytes a requeued dead letter goes back as: as ``requeue QUEUE`` makes them (no
    ``dead``, zero attempts; a corrupt item's original bytes)."""
    if item.header.get("corrupt"):
        return item.payload
    header = {k: v for k, v in item.header.items() if k != "dead"}
    header["attempts"] = 0
    return item_format.encode(header, item.payload)


async def take_dead(redis: Redis, queue: ReliableQueue, item: Item, requeue: bool) -> bool:
    """Drop one dead letter, or move it back to its queue, atomically by its exact bytes.
    False: it was no longer there."""
    script = redis.register_script(_TAKE_DEAD)
    new = requeued(item) if requeue else b""
    return int(await script(keys=[queue.dead_key, queue.name], args=[item.raw, new])) == 1
