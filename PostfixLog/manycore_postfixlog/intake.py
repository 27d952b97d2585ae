"""The feeders' side of the to-postfix queue: taking items (in batches from a backlog) and
claiming them before they are injected (issue 17 item 4: exactly once across consumers)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

from redis.exceptions import RedisError

from manycore_common.consumer import Consumer
from manycore_common.item import Item
from manycore_common.queue import ReliableQueue

from . import metrics
from .headers import take_return_path
from .state import Claim, State

log = logging.getLogger(__name__)

#: Longest BLMOVE of a feeder (also bounds how fast a feeder notices a stop).
TAKE_TIMEOUT = 0.5
#: Pause of a feeder that found an item claimed by another consumer.
BACKOFF_SECONDS = 0.5
#: Most items a feeder takes at once from a backlog: one round trip takes them, one more
#: claims them all (instead of two per item). Small, so that a light load still spreads
#: over the feeders.
TAKE_BATCH = 4
#: After a batch take found the queue empty, take one item at a time for this long.
BATCH_PAUSE_SECONDS = 1.0


#: The return path, the recipients and the message without our X-ReturnPathIb header.
Envelope = tuple[str, list[str], bytes]


def envelope_of(item: Item) -> Envelope | None:
    """None: the item lacks a return path or recipients (it is dead-lettered)."""
    header_sender, data = take_return_path(item.payload)
    sender = header_sender or item.header.get("return_path")
    rcpts = [str(r) for r in item.header.get("rcpts") or []]
    if not sender or not rcpts:
        return None
    return str(sender), rcpts, data


def item_key(item: Item) -> str:
    """The item's id (the Transformer keeps the receiver's); an item without one is named by
    its content, which stays the same when the reaper hands it back."""
    return item.id or hashlib.sha256(item.raw).hexdigest()[:32]


class Intake:
    """What the feeders of one consumer share: its queue, PostfixLog's state."""

    def __init__(self, consumer: Consumer, state: State, incoming: ReliableQueue) -> None:
        self.consumer = consumer
        self.state = state
        self.incoming = incoming

    async def take(self, batch_after: float) -> tuple[list[Item], float]:
        """While the queue has a backlog, up to ``TAKE_BATCH`` items without waiting (one
        round trip for them all); else one item, waiting for it (BLMOVE). After a batch take
        found nothing, items are taken one at a time for ``BATCH_PAUSE_SECONDS``: a light
        load pays no empty batch take per message. Returns the items and when to try a
        batch again."""
        now = time.monotonic()
        if now >= batch_after:
            items = await self.consumer.take_batch(TAKE_BATCH, timeout=0)
            if items:
                return items, now
            batch_after = now + BATCH_PAUSE_SECONDS
        item = await self.consumer.take(TAKE_TIMEOUT)
        return ([item] if item is not None else []), batch_after

    async def ask_claim(self, item: Item, claimer: str) -> Claim:
        try:
            return await self.state.claim(item_key(item), claimer, time.monotonic())
        except (RedisError, OSError):
            # It cannot be returned now (Redis fails): forgotten, it is a stray that
            # keep_alive returns once Redis answers, instead of staying held for good.
            self.consumer.forget(item)
            raise

    async def claim_many(self, items: list[Item]) -> list[Claim | None]:
        """Claim the items before injecting them (issue 17 item 4), in one round trip. None:
        not ours to inject (``settle_claim``). The claimer is one attempt (consumer id plus
        a random part), not the process: two feeders of one process must not share a
        claim."""
        claimers = [f"{self.consumer.id}/{os.urandom(4).hex()}" for _ in items]
        try:
            claims = await self.state.claim_many(
                [item_key(i) for i in items], claimers, time.monotonic()
            )
        except (RedisError, OSError):
            for item in items:
                self.consumer.forget(item)  # strays, as in ask_claim
            raise
        return [await self.settle_claim(i, c) for i, c in zip(items, claims, strict=True)]

    async def settle_claim(self, item: Item, claim: Claim) -> Claim | None:
        """None: already injected (acked) or claimed by another feeder (put back at the end
        of the queue, and this feeder pauses)."""
        if claim.status == "done":
            # Already in a Postfix (our ack was lost, or the reaper gave it back): not twice.
            await self.consumer.ack(item)
            return None
        if claim.status == "held":
            # Another consumer is injecting it, or stalled while doing so (its items were
            # reclaimed meanwhile): it injects and records it, or its claim runs out.
            metrics.CLAIMED_ELSEWHERE.inc()
            log.info(
                "item claimed by another consumer",
                extra={"uuid": item.uuid, "holder": claim.holder},
            )
            await self.consumer.hand_over(item, self.incoming, item.raw)
            await asyncio.sleep(BACKOFF_SECONDS)
            return None
        return claim
