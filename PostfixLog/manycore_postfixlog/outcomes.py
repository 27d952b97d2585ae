"""Log records + what we know of the message → the events to emit (pure).

docs/ARCHITECTURE.md#events: ``delivered`` (ip, rcpt) on status=sent; ``bounce`` with type ``hard``
or ``unroutable`` on status=bounced and type ``soft`` when the message expired (Postfix gave up
after temporary failures), with ``reason`` (the remote reply), ``ip``, ``rcpt`` and
``category``; optionally a ``deferred`` progress event per temporary failure. Timestamps are
those of the log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manycore_common import bounce_rules as rules
from manycore_common.events import new_event

from .logparse import Delivery, Expired, Record
from .state import Deferral, Message, rcpt_key

#: Reason of a soft bounce when no deferral of that recipient was seen (e.g. the message
#: expired on its first attempt with maximal_queue_lifetime = 0).
EXPIRED_REASON = "message expired in the queue before it could be delivered"


@dataclass(frozen=True)
class Final:
    """The one final event of a recipient."""

    rcpt: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Deferred:
    """A temporary failure: remembered for the soft bounce, optionally an event."""

    rcpt: str
    deferral: Deferral
    #: Identifies this attempt, so a line read twice emits its event once.
    once: str
    event: dict[str, Any] | None


Action = Final | Deferred


def bounce_event(
    msg: Message,
    rcpt: str,
    *,
    bounce_type: rules.BounceType,
    reason: str,
    dsn: str,
    ip: str | None,
    timestamp: float,
) -> dict[str, Any]:
    return new_event(
        "bounce",
        uuid=msg.uuid,
        streamid=msg.stream_id,
        timestamp=timestamp,
        type=bounce_type,
        reason=reason,
        ip=ip,
        rcpt=rcpt,
        category=rules.category(dsn, reason),
    )


def _delivery(rec: Delivery, msg: Message, deferred_events: bool, once: str) -> list[Action]:
    # orig_to= is the address we gave Postfix when it rewrote it (postconf(5) enable_original_
    # recipient); our rcpts are what the events must name.
    rcpt = msg.rcpt(rec.orig_rcpt or rec.rcpt)
    if rec.status == "sent":
        event = new_event(
            "delivered",
            uuid=msg.uuid,
            streamid=msg.stream_id,
            timestamp=rec.timestamp,
            ip=rec.ip,
            rcpt=rcpt,
        )
        return [Final(rcpt, event)]
    if rec.status in ("bounced", "expired"):
        kind: rules.BounceType = (
            rules.permanent_type(rules.category(rec.dsn, rec.reason))
            if rec.status == "bounced"
            else "soft"
        )
        event = bounce_event(
            msg,
            rcpt,
            bounce_type=kind,
            reason=rec.reason,
            dsn=rec.dsn,
            ip=rec.ip,
            timestamp=rec.timestamp,
        )
        return [Final(rcpt, event)]
    deferral = Deferral(rec.reason, rec.dsn, rec.ip)
    progress: dict[str, Any] | None = None
    if deferred_events:
        progress = new_event(
            "deferred",
            uuid=msg.uuid,
            streamid=msg.stream_id,
            timestamp=rec.timestamp,
            reason=rec.reason,
            ip=rec.ip,
            rcpt=rcpt,
            category=rules.category(rec.dsn, rec.reason),
        )
    return [Deferred(rcpt, deferral, once, progress)]


def _expired(rec: Expired, msg: Message) -> list[Action]:
    """qmgr logs expiry once per message, not per recipient: every recipient still without a
    final event gets a soft bounce, with its last deferral as the reason."""
    actions: list[Action] = []
    seen: set[str] = set()
    for rcpt in msg.rcpts:
        key = rcpt_key(rcpt)
        if key in msg.finals or key in seen:
            continue
        seen.add(key)
        last = msg.deferrals.get(key, Deferral(EXPIRED_REASON, "4.0.0", None))
        event = bounce_event(
            msg,
            rcpt,
            bounce_type="soft",
            reason=last.reason,
            dsn=last.dsn,
            ip=last.ip,
            timestamp=rec.timestamp,
        )
        actions.append(Final(rcpt, event))
    return actions


def actions(
    record: Record, msg: Message, *, deferred_events: bool = False, once: str = ""
) -> list[Action]:
    """What ``record`` means for ``msg``. ``once`` names the log line (its position), so a
    deferred event of a line read twice is emitted once; by default the line's time."""
    if isinstance(record, Expired):
        return _expired(record, msg)
    return _delivery(record, msg, deferred_events, once or f"{record.timestamp:.6f}")


def refusal_event(msg: Message, rcpt: str, code: int, reply: str, now: float) -> dict[str, Any]:
    """A recipient our own Postfix refused with a 5xx at RCPT TO (e.g. a domain routed to the
    error transport): final at once, there will be no log line of a delivery."""
    text = f"{code} {reply}".strip()
    dsn = reply.split(" ", 1)[0] if reply[:2] in ("5.", "4.") else f"{code // 100}.0.0"
    cat = rules.category(dsn, text)
    return bounce_event(
        msg,
        rcpt,
        bounce_type=rules.permanent_type(cat),
        reason=text,
        dsn=dsn,
        ip=None,
        timestamp=now,
    )
