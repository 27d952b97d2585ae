"""PostfixLog's metrics. The first seven names are the README's public contract."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from .instance import QUEUES

QUEUE_MESSAGES = {
    queue: Gauge(f"postfix_{queue}_queue_messages", f"Messages in Postfix's {queue} queue")
    for queue in QUEUES
}
POLLED = Counter("postfix_emails_polled", "Number of messages pulled from Redis")
TO_POSTFIX = Counter("postfix_emails_to_postfix", "Number of messages queued by the Postfix daemon")
EVENTS = Counter(
    "postfix_events",
    "Events emitted from Postfix's log and replies, by event and bounce type",
    ["event", "type"],
)
UNMATCHED = Counter(
    "postfix_log_unmatched_lines",
    "Delivery log lines whose queue id PostfixLog does not know (not its messages)",
)
INJECT_FAILURES = Counter(
    "postfix_inject_failures",
    "Failed hand-overs to Postfix: temporary (retried) or permanent (dead-lettered)",
    ["kind"],
)
REQUEUED = Counter(
    "postfix_requeued_messages",
    "Messages handed back from Postfix's queue to the to-postfix queue by a stop",
)
CLAIMED_ELSEWHERE = Counter(
    "postfix_items_claimed_elsewhere",
    "Items taken while another PostfixLog held their claim (put back, not injected twice)",
)
LOG_ROTATIONS = Counter("postfix_log_rotations", "Rotations of Postfix's log file")
CONFIG_RELOADS = Counter(
    "postfix_config_reloads",
    "Config file changes: applied live, unchanged, refused (a key needs a restart), invalid, "
    "failed (Postfix did not take it)",
    ["result"],
)
BACKPRESSURE = Gauge(
    "postfix_backpressure", "1 while pulling pauses because Postfix's queue is full"
)

for _event, _type in (
    ("delivered", ""),
    ("bounce", "hard"),
    ("bounce", "soft"),
    ("bounce", "unroutable"),
    ("deferred", ""),
):
    EVENTS.labels(_event, _type)
for _kind in ("temporary", "permanent"):
    INJECT_FAILURES.labels(_kind)
for _result in ("applied", "unchanged", "refused", "invalid", "failed"):
    CONFIG_RELOADS.labels(_result)


def count_event(event: dict[str, Any]) -> None:
    EVENTS.labels(str(event.get("event", "")), str(event.get("type", ""))).inc()
