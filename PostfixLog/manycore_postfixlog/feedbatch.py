"""A feeder's batch of claimed items handed to Postfix in one write (issue 20: CPU per
message from a backlog).

From a backlog a feeder takes and claims up to ``intake.TAKE_BATCH`` items in two round
trips; their injections then go out together (``Injector.send_many``: one transaction per
message, RSET/MAIL/RCPT/BDAT LAST each, replies in order) and their records in one more
round trip (``app.PostfixLog.record_many``). Only what that settles for certain leaves the
batch: a message Postfix queued (or whose every recipient it refused), and one it refused
for good (dead-lettered, as ``send`` would have it; sending it again could only duplicate a
message Postfix took without naming a queue id). Everything else (a temporary failure, a
broken connection, several recipients) goes on item by item as before
(``app.PostfixLog.handle``), which retries or claims again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from manycore_common.item import Item

from . import tracing
from .injector import Injected, Injector, NotSent, PermanentFailure, TemporaryFailure
from .intake import Envelope, item_key
from .settings import Settings
from .state import Claim, Message

#: One claimed item of a batch: the item, its envelope and our claim on it.
Todo = tuple[Item, Envelope, Claim]


async def inject_together(
    injector: Injector, todo: Sequence[Todo]
) -> list[Injected | PermanentFailure | None]:
    """Per item of ``todo``: Injected or PermanentFailure when the batch settled it, None
    when it is left to the item-by-item path. Nothing is sent unless every claim is fresh
    at the write (the guard ``send`` asks for, for all of them at once)."""
    left: list[Injected | PermanentFailure | None] = [None] * len(todo)
    single = [n for n, (_, (_, rcpts, _), _) in enumerate(todo) if len(rcpts) == 1]
    if len(single) < 2:
        return left
    claims = [todo[n][2] for n in single]
    messages = [(todo[n][1][0], todo[n][1][1][0], todo[n][1][2]) for n in single]
    try:
        if not await injector.chunking():
            return left
        outcomes = await injector.send_many(
            messages, lambda: all(c.fresh(time.monotonic()) for c in claims)
        )
    except (NotSent, TemporaryFailure, PermanentFailure):
        return left  # nothing of the batch was sent: item by item, as before
    for n, outcome in zip(single, outcomes, strict=True):
        if isinstance(outcome, Injected | PermanentFailure):
            left[n] = outcome
    return left


def message_of(item: Item, envelope: Envelope) -> Message:
    """What the record keeps of an item (its recipients: all of the envelope's)."""
    sender, rcpts, _ = envelope
    return Message(
        uuid=item.uuid,
        stream_id=item.stream_id,
        from_domain=item.header.get("from_domain"),
        return_path=sender,
        rcpts=tuple(rcpts),
        item_id=item_key(item),
    )


def injection_trace(item: Item, injected: Injected, settings: Settings) -> tuple[str, bytes] | None:
    """``injected`` for ``trace:<uuid>``, written by the record's script."""
    if not item.uuid or not settings.trace.enabled:
        return None
    record = tracing.injected(
        injected.queue_id,
        settings.instance,
        item_key(item),
        len(injected.accepted),
        [r.rcpt for r in injected.refused],
        time.time(),
    )
    return item.uuid, record
