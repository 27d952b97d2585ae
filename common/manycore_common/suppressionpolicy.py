"""Which suppression entries an event calls for (pure): the policy of
``common-config.suppression`` applied to one event, for the scripts that push it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import suppression as s
from .config import SuppressionSettings
from .suppressionstore import Op


def ops_for_event(
    event: dict[str, Any], domains: Iterable[str], settings: SuppressionSettings
) -> list[Op]:
    """The suppression writes an event calls for (pure): under each sending domain in
    ``domains`` (one for PostfixLog; MxServer's may be several, see its README section), for
    the event's ``rcpt``. Nothing without a recipient, or when the list is disabled."""
    rcpt = event.get("rcpt")
    if not settings.enabled or not isinstance(rcpt, str):
        return []
    try:
        address = s.normalize(rcpt)
    except s.BadAddress:
        return []
    reason, threshold = _reason(event, settings)
    if reason is None:
        return []
    now = float(event.get("timestamp") or 0)
    entry = s.new_entry(
        reason,
        now,
        settings.expiry_days.days(reason),
        str(event.get("id", "")),
        str(event.get("uuid") or ""),
    )
    stream = event.get("streamid") if reason == "unsubscribe" else None
    if settings.unsubscribe_scope != "stream":
        stream = None
    window = settings.soft_bounce_window_days * 86400
    return [
        Op(s.scope_of(d, stream), address, entry, threshold, window if threshold else 0)
        for d in sorted(set(domains))
    ]


def _reason(event: dict[str, Any], settings: SuppressionSettings) -> tuple[s.Reason | None, int]:
    kind = event.get("event")
    if kind in ("spam-report", "unsubscribe"):
        return kind, 0
    if kind != "bounce":
        return None, 0
    if event.get("type") == "soft" and settings.soft_bounce_threshold > 0:
        return "soft-bounce-repeated", settings.soft_bounce_threshold
    return s.bounce_reason(str(event.get("type")), event.get("category")), 0
