"""Trace records of PostfixLog's stages (pure), for ``manycore-queues trace``
(common/manycore_common/trace.py): the injection (Postfix queue id, which instance, which
recipients Postfix took or refused) and every outcome read from Postfix's log."""

from __future__ import annotations

from typing import Any

from manycore_common import trace

BY = "postfixlog"


def injected(
    queue_id: str | None,
    instance: str,
    item_id: str,
    accepted: int,
    refused: list[str],
    at: float,
) -> bytes:
    return trace.entry(
        "injected",
        BY,
        at,
        queue_id=queue_id or "-",
        instance=instance,
        item=item_id,
        accepted=accepted,
        refused=refused or None,
    )


def outcome(event: dict[str, Any], queue_id: str, instance: str, at: float) -> bytes:
    """A final or deferred outcome from the log, named like its event (``delivered``,
    ``bounce``, ``deferred``)."""
    reason = event.get("reason")
    return trace.entry(
        "log",
        BY,
        at,
        outcome=event.get("event"),
        type=event.get("type"),
        rcpt=event.get("rcpt"),
        queue_id=queue_id,
        instance=instance,
        category=event.get("category"),
        reason=reason[:300] if isinstance(reason, str) else None,
        happened=event.get("timestamp"),
    )
