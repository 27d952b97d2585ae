"""Every Prometheus metric the Receiver defines itself (names are a public contract: README
"Monitoring"). The ingest counters both front doors share are in ``manycore_common.intake``."""

from __future__ import annotations

from prometheus_client import Counter

AUTH_FAILURES = Counter(
    "receiver_auth_failures",
    "Failed SMTP AUTH attempts, by reason (bad-credentials, locked-out; missing: MAIL, RCPT "
    "or DATA without AUTH)",
    ["reason"],
)

for _reason in ("bad-credentials", "locked-out", "missing"):
    AUTH_FAILURES.labels(_reason)

DUPLICATES = Counter(
    "receiver_duplicates",
    "Messages whose X-Uuid was queued within the idempotency window: answered 250 as the "
    "first one was, not queued again",
)
