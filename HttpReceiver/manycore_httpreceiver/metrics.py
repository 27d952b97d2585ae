"""Every Prometheus metric the HttpReceiver defines itself (names are a public contract:
README "Monitoring"). The ingest counters both front doors share are in
``manycore_common.intake``."""

from __future__ import annotations

from prometheus_client import Counter

AUTH_FAILURES = Counter(
    "httpreceiver_auth_failures",
    "Failed HTTP Basic auth attempts, by reason (missing, bad-credentials, locked-out)",
    ["reason"],
)

for _reason in ("missing", "bad-credentials", "locked-out"):
    AUTH_FAILURES.labels(_reason)

DUPLICATES = Counter(
    "httpreceiver_duplicates",
    "Messages whose X-Uuid or Idempotency-Key was claimed within the idempotency window: "
    "answered 200 as the first one was, not queued again. By key: x-uuid, idempotency-key",
    ["key"],
)

for _key in ("x-uuid", "idempotency-key"):
    DUPLICATES.labels(_key)

PROXY_LOCKOUTS_REFUSED = Counter(
    "httpreceiver_proxy_lockouts_refused",
    "Failed logins not counted against a trusted proxy's own address (X-Forwarded-For named "
    "no client outside trusted-proxies): locking it out would lock out every client behind it",
)

#: One-click unsubscribe (unsubscribe.py).
RESULTS = Counter(
    "httpreceiver_unsubscribe",
    "One-click unsubscribe requests, by result (ok, repeated, invalid, expired, unavailable)",
    ["result"],
)

for _result in ("ok", "repeated", "invalid", "expired", "unavailable"):
    RESULTS.labels(_result)

API_ERRORS = Counter(
    "httpreceiver_suppression_api_errors",
    "Suppression API requests refused, by reason",
    ["reason"],
)

for _reason in (
    "bad-request",
    "not-found",
    "too-many-entries",
    "unavailable",
    "too-large",
    "request-timeout",
):
    API_ERRORS.labels(_reason)
