"""Handing Postfix's queue back to Redis on stop, and cleaning up after a stop that died.

``queue-on-stop: keep`` (the queue directory is a persistent volume of this instance) leaves
the queue where it is: the next start of the same instance delivers it, and its state in
Redis (queue ids, log position: ``state``) is still there for the log lines it writes.

With ``hand-back`` (the default: in a pod with an emptyDir the queue directory does not
outlive the pod), whatever Postfix still holds when
PostfixLog stops (deferred mail, mostly) goes back on the to-postfix queue: the stored message
with its envelope sender and only the recipients Postfix has not finished with (postcat(1)
lists finished ones as ``done_recipient``), then it is deleted from Postfix's queue. Pushing
the item, forgetting the old queue id and marking it "requeued" is one Redis script; should
PostfixLog die before the deletion, the next start deletes the marked message instead of
sending it a second time.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from redis.exceptions import RedisError

from manycore_common import feedbacktag
from manycore_common import item as item_format

from . import metrics
from .headers import add_return_path, drop_own_received, to_crlf
from .instance import LIVE_QUEUES, PostfixError, PostfixInstance
from .state import Message, State

log = logging.getLogger(__name__)

SOURCE = "postfixlog"
#: The Transformer's return path, b<uuid>.<tag>@<return-path-domain> (feedbacktag; the tag is
#: not checked here: PostfixLog has no key and only reads back what our own queue held), or
#: bounce-<uuid>@ of mail queued before tagged return paths.
_BOUNCE_ADDRESS = re.compile(
    rf"(?:b({feedbacktag.UUID_RE.pattern})\.[a-z2-7]{{26}}|bounce-([a-z0-9]+))@"
)


def parse_envelope(text: str) -> tuple[str, list[str]]:
    """(envelope sender, recipients not yet done) from ``postcat -e`` output."""
    sender: str | None = None
    pending: list[str] = []
    for line in text.splitlines():
        name, colon, value = line.partition(": ")
        if not colon and line.endswith(":"):
            name, value = line[:-1], ""
        if name == "sender" and sender is None:
            sender = value.strip()
        elif name == "recipient":
            pending.append(value.strip())
    return sender or "", pending


def handback_item(
    queue_id: str, content: bytes, sender: str, rcpts: list[str], msg: Message | None
) -> bytes:
    """A to-postfix queue item like the Transformer's, for the recipients left."""
    payload = add_return_path(to_crlf(drop_own_received(content, queue_id)), sender)
    uuid = msg.uuid if msg else None
    if uuid is None:
        match = _BOUNCE_ADDRESS.match(sender)
        uuid = (match.group(1) or match.group(2)) if match else None
    extra: dict[str, Any] = {
        "return_path": sender,
        "from_domain": msg.from_domain if msg else None,
        "requeued_from": queue_id,
    }
    return item_format.new_item(
        payload,
        source=SOURCE,
        uuid=uuid,
        stream_id=msg.stream_id if msg else None,
        rcpts=rcpts,
        extra={k: v for k, v in extra.items() if v is not None},
    )


async def hand_back(instance: PostfixInstance, state: State) -> int:
    """Every message still in Postfix's queue → the to-postfix queue. Postfix must not run
    (nothing may change under our feet). Returns how many were handed back; a message that
    cannot be stays in Postfix's queue (on hold) and is released at the next start."""
    handed = 0
    for queue, queue_id in instance.queued():
        try:
            sender, rcpts = parse_envelope(await instance.envelope(queue_id))
            if rcpts:
                msg = await state.message(queue_id)
                content = await instance.content(queue_id)
                item = handback_item(queue_id, content, sender, rcpts, msg)
                await state.requeue(queue_id, item)
                handed += 1
                metrics.REQUEUED.inc()
            await instance.delete([queue_id])
        except (PostfixError, OSError, RedisError) as exc:
            log.error(
                "could not hand a message back; it stays in postfix's queue",
                extra={"queue_id": queue_id, "queue": queue, "error": str(exc)},
            )
            continue
        log.info(
            "message handed back to redis",
            extra={"queue_id": queue_id, "queue": queue, "recipients": len(rcpts)},
        )
    return handed


def hands_back(mode: str, marker_present: bool) -> bool:
    """Whether a stop empties Postfix's queue into Redis: always with ``hand-back``; with
    ``keep`` only when an operator left the marker file (this instance is going away)."""
    return mode == "hand-back" or marker_present


async def settle_on_stop(instance: PostfixInstance, state: State) -> None:
    """After Postfix stopped and its log was read to the end: hand the queue back, or keep
    it for the next start (``queue-on-stop``)."""
    settings = instance.settings
    marker = settings.paths.hand_back_marker
    if not hands_back(settings.queue_on_stop, marker.exists()):
        counts = instance.queue_counts()
        log.info(
            "postfix queue kept for the next start",
            extra={
                "messages": sum(counts[q] for q in LIVE_QUEUES),
                "queue_directory": str(settings.paths.queue_dir),
            },
        )
        return
    handed = await hand_back(instance, state)
    marker.unlink(missing_ok=True)
    log.info("postfix queue handed back", extra={"messages": handed})


async def clean_up_after_stop(instance: PostfixInstance, state: State) -> None:
    """Before Postfix starts: delete what a previous stop handed back but could not delete,
    and release what it put on hold but could not hand back."""
    stale = [qid for _, qid in instance.queued() if await state.was_requeued(qid)]
    if stale:
        log.warning("deleting messages already handed back", extra={"count": len(stale)})
        await instance.delete(stale)
    await instance.release_held()
