"""The reliable queue's upgrade path (``queue`` holds the key layout): keys of the previous
release and processing lists made before the registry.

The previous release named the side keys ``Q:dead``, ``Q:processing:<id>`` and so on. For one
release the reaper also looks there (``reap_legacy``): dead letters move to the new dead list,
and what a consumer of the previous release held goes back to ``Q`` once its heartbeat (in
``Q:consumers``) expired, so a rolling upgrade loses nothing.

Processing lists made by a version without the registry are adopted once by
``adopt_unregistered`` (``manycore-redis`` runs it at start; ``manycore-queues adopt`` on
demand): the only SCAN left, never on a consumer's path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .queue import ReapResult, ReliableQueue

log = logging.getLogger(__name__)

#: Items one MOVE_LEGACY call moves at most.
MOVE_BATCH = 1000


async def reap_legacy(queue: ReliableQueue) -> ReapResult:
    """Move what the previous release's names still hold (``keyspace.legacy_queue_keys``:
    ``Q:dead``, ``Q:processing:<id>`` ...; and the unprefixed list ``Q`` once a key prefix
    is set) to this release's keys: dead letters into ``dead_key``, the held items of
    consumers whose legacy heartbeat expired back into the queue, as the reaper always
    did. Costs one round trip when there is nothing (the usual case). These scripts span
    slots: they only find keys to move on the single Redis an older release ran on."""
    from .queue import ReapResult  # queue imports this module

    old = queue.legacy
    probes = [old["consumers"], old["holders"], old["doorbell"], old["dead"]]
    if old["queue"] != queue.name:
        probes.append(old["queue"])
    pipe = queue.redis.pipeline(transaction=False)
    for key in probes:
        pipe.exists(key)
    found = dict(zip(probes, await pipe.execute(), strict=True))
    result = ReapResult(0, 0, 0)
    if found[old["consumers"]] or found[old["holders"]]:
        result = await queue.reap_registry(
            old["consumers"], old["holders"], lambda consumer: old["processing"] + consumer
        )
    if found[old["doorbell"]]:
        # A wake-up token nobody waits on any more.
        await queue.redis.delete(old["doorbell"])
    moved = 0
    for key in probes[3:]:
        target = queue.dead_key if key == old["dead"] else queue.name
        while found[key]:
            n = int(await queue.move_legacy(keys=[key, target], args=[MOVE_BATCH]))
            moved, found[key] = moved + n, n == MOVE_BATCH
    if moved or result.returned or result.dead:
        log.warning(
            "moved items from the previous release's keys",
            extra={"queue": queue.name, "moved": moved, "returned": result.returned},
        )
    return result


async def adopt_unregistered(queue: ReliableQueue, scan_count: int = 1000) -> int:
    """Register processing lists the registry does not know (made by a version without
    it): one SCAN of the whole keyspace per name form, so for a migration, never a
    consumer's loop. Lists under the previous release's names go to its registry, which
    ``reap_legacy`` reads. Safe at any time: an entry only makes the reaper look (it
    re-checks the heartbeat atomically), and NX never touches an entry that exists.
    Returns how many were new."""
    added = 0
    for prefix, registry in (
        (queue.processing_key(""), queue.holders_key),
        (queue.legacy["processing"], queue.legacy["holders"]),
    ):
        ids: list[str] = []
        match = _glob_escape(prefix) + "*"
        async for key in queue.redis.scan_iter(match=match, count=scan_count):
            ids.append(_text(key)[len(prefix) :])
        if ids:
            added += int(await queue.redis.zadd(registry, dict.fromkeys(ids, 0), nx=True) or 0)
    return added


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
