"""BackData's metrics. The unprefixed names are the README's public contract and exist exactly
as written there; the ``backdata_`` ones are ours."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .policy import RETRY_REASONS

#: Event type → counter of events of that type delivered (2xx) to the webhook.
DELIVERED_BY_TYPE = {
    "delivered": Counter(
        "delivered_events", "Delivered events successfully posted to the webhook (2xx)"
    ),
    "bounce": Counter("bounced_events", "Bounce events successfully posted to the webhook (2xx)"),
    "error": Counter("error_events", "Error events successfully posted to the webhook (2xx)"),
    "spam-report": Counter(
        "spam_report_events", "Spam-report events successfully posted to the webhook (2xx)"
    ),
    "unsubscribe": Counter(
        "unsubscribe_events", "Unsubscribe events successfully posted to the webhook (2xx)"
    ),
}
MALFORMED = Counter(
    "malformed_events",
    "Queue items that were not an event (not JSON, not an object, or no `event` field); "
    "each went to the dead-letter list",
)
POSTING = Gauge("number_of_events_currently_posting", "Events in POST requests in flight right now")
PUSHED = Counter(
    "successfully_pushed_events", "Events successfully posted to the webhook (2xx answer)"
)
FAILED = Counter(
    "failed_pushed_events",
    "Events in POSTs that failed (non-2xx answer, timeout or connection error), counted once "
    "per failed attempt",
)
RETRIES = Counter(
    "backdata_post_retries",
    "Failed POSTs whose batch will be tried again, by reason",
    ["reason"],
)
DEAD_LETTERED = Counter(
    "backdata_dead_lettered_events",
    "Events moved to the dead-letter list, by reason (rejected: a non-retryable answer; "
    "expired: older than max-event-age-seconds; malformed)",
    ["reason"],
)
OLDEST_AGE = Gauge(
    "backdata_oldest_event_age_seconds",
    "Age of the oldest event not yet delivered (waiting in the queue or held by this process)",
)
HELD = Gauge(
    "backdata_events_held",
    "Events this process has taken from the queue and not yet settled (in its Redis "
    "processing list)",
)
POST_SECONDS = Histogram(
    "backdata_post_duration_seconds",
    "Time of one POST to the webhook, answered or not",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

for _reason in RETRY_REASONS:
    RETRIES.labels(_reason)
for _reason in ("rejected", "expired", "malformed"):
    DEAD_LETTERED.labels(_reason)
