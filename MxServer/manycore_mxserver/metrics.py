"""Every Prometheus metric MxServer defines (names are a public contract: README "Monitoring").

Labelled counters are created with every label value up front, so each series exists (at 0)
before its first event and a rate() over it is never missing."""

from __future__ import annotations

from prometheus_client import Counter

RECEIVED_UNSUBSCRIBE = Counter(
    "mxserver_received_unsubscribe", "Total number of unsubscribe emails received"
)

RECEIVED_UNCLASSIFIED = Counter(
    "mxserver_received_unclassified", "Total number of unclassified emails received"
)

RECEIVED_BOUNCE = Counter(
    "mxserver_received_bounce",
    "Bounce reports received (asynchronous DSNs and text bounces), by type of the first failure",
    ["type"],
)

RECEIVED_AUTOREPLY = Counter("mxserver_received_autoreply", "Auto-replies received")

RECEIVED_SPAM_REPORT = Counter("mxserver_received_spam_report", "Spam reports (ARF) received")

RECEIVED_DELAY = Counter(
    "mxserver_received_delay_notice", "Delay notices received (temporary, no event)"
)

RECEIVED_OWN_DSN = Counter(
    "mxserver_received_own_dsn", "DSNs written by our own Postfix (already reported, no event)"
)

UNPROVEN = Counter(
    "mxserver_unproven_reports",
    "Bounces, auto-replies and spam reports no verified tag ties to a recipient we mailed "
    "(no event; kept as unclassified), by kind",
    ["kind"],
)

REPORTS_TRUNCATED = Counter(
    "mxserver_reports_truncated",
    "Reports with more failed recipients than limits.max-failures-per-report (the rest not read)",
)

for _type in ("hard", "soft", "unroutable"):
    RECEIVED_BOUNCE.labels(_type)

for _kind in ("bounce", "autoreply", "spam-report"):
    UNPROVEN.labels(_kind)

NOT_KEPT = Counter(
    "mxserver_unclassified_not_kept",
    "Unclassified messages accepted but not stored: over unclassified.untagged-per-client "
    "(per-client) or unclassified.tagged-per-uuid (per-tag)",
    ["reason"],
)

for _reason in ("per-client", "per-tag"):
    NOT_KEPT.labels(_reason)

CLASSIFY_FAILED = Counter(
    "mxserver_classify_failed",
    "Messages kept as unclassified because classification took longer than "
    "classifier.timeout-seconds (timeout) or its worker process died (crash)",
    ["reason"],
)

for _reason in ("timeout", "crash"):
    CLASSIFY_FAILED.labels(_reason)

REFUSED = Counter(
    "mxserver_refused",
    "SMTP commands or messages refused, by reason (relay, bad-tag, too-many-recipients, "
    "too-many-commands, too-many-connections, rate-limit, too-large, line-too-long, "
    "redis-unavailable, busy)",
    ["reason"],
)

for _reason in (
    "relay",
    "bad-tag",
    "too-many-recipients",
    "too-many-commands",
    "too-many-connections",
    "rate-limit",
    "too-large",
    "line-too-long",
    "redis-unavailable",
    "busy",
):
    REFUSED.labels(_reason)
