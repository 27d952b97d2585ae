"""Every Prometheus metric the Transformer defines (names are a public contract: README
"Monitoring")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from manycore_common import suppression

POLLED_PRIMARY = Counter(
    "transformer_polled_primary", "Number of emails received from Receiver on priority queue"
)

POLLED_DEFAULT = Counter(
    "transformer_polled_default", "Number of emails received from Receiver on default queue"
)

PUSHED = Counter("transformer_pushed", "Number of emails pushed to postfix queue")

COPIES = Counter(
    "transformer_pushed_copies",
    "Items pushed to the postfix queue: one per recipient, each with its own return path",
)

ERRORS = Counter(
    "transformer_errors",
    "Messages that could not be transformed and went to the dead-letter list, by reason",
    ["reason"],
)

WARNINGS = Counter(
    "transformer_warnings", "Conditions worth a look that did not stop a message", ["reason"]
)

SIGN_SECONDS = Histogram(
    "transformer_sign_seconds",
    "Time to DKIM-sign one message: its body hash and every recipient's copy",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)

for _reason in (
    "unknown-domain",
    "bad-uuid",
    "bad-from",
    "unparseable",
    "bad-recipients",
    "too-many-copies",
    "internal-error",
):
    ERRORS.labels(_reason)

for _reason in (
    "weak-key",
    "legacy-unsubscribe-address",
    "untagged-unsubscribe-address",
    "recipients-from-headers",
    "stream-registry",
    "stream-hash-collision",
):
    WARNINGS.labels(_reason)

SUPPRESSED = Counter(
    "transformer_suppressed_recipients",
    "Recipients dropped because they are on the suppression list, by the entry's reason",
    ["reason"],
)

SUPPRESSED_MESSAGES = Counter(
    "transformer_suppressed_messages",
    "Messages not sent at all: every recipient was on the suppression list",
)

LIST_SIZE = Gauge(
    "suppression_list_entries",
    "Entries on the suppression list (all sending domains), from the counter kept in Redis",
    multiprocess_mode="max",
)

for _reason in suppression.REASONS:
    SUPPRESSED.labels(_reason)
