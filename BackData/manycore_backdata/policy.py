"""What to do after one POST (pure): done, try again later, or give up on the batch; and how
long to wait before trying again.

Retried: no answer (connection refused or reset, TLS failure, timeout), 408 Request Timeout,
429 Too Many Requests and 5xx, the failures that say "not now" rather than "not this"
(RFC 9110 §15.5.9, §15.6; RFC 6585 §4). Every other answer that is not 2xx (400, 401, 404, a
redirect, ...) would fail the same way again, so the batch goes to the dead-letter list with
the answer, for an operator to look at and requeue.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

#: Characters of the webhook's answer kept in a dead-letter reason.
MAX_EXCERPT = 200
#: Longest Retry-After honoured; a larger one (or a date far ahead) is a misconfigured server,
#: and waiting on it would park events for no reason.
MAX_RETRY_AFTER = 3600.0

Verdict = Literal["delivered", "retry", "reject"]


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    #: Short, fixed vocabulary (a metric label): ``http-5xx``, ``timeout``, ``connection``, ...
    reason: str
    #: For logs and dead-letter reasons: what happened, with an excerpt of the answer.
    detail: str
    #: Seconds the server asked us to wait (Retry-After), if it did.
    retry_after: float | None = None


RETRY_REASONS = ("connection", "timeout", "http-408", "http-429", "http-5xx")


def excerpt(body: bytes) -> str:
    """The start of an answer, printable and on one line, for a dead-letter reason."""
    text = body[: MAX_EXCERPT * 4].decode("utf-8", errors="replace")
    text = re.sub(r"\s+", " ", text).strip()
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:MAX_EXCERPT]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date
    (RFC 9110 §10.2.3). None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def from_status(status: int, body: bytes, retry_after: str | None, now: float) -> Outcome:
    detail = f"webhook answered {status}"
    text = excerpt(body)
    if text:
        detail += f": {text}"
    if 200 <= status < 300:
        return Outcome("delivered", f"http-{status}", detail)
    if status in (408, 429) or 500 <= status < 600:
        reason = f"http-{status}" if status < 500 else "http-5xx"
        return Outcome("retry", reason, detail, parse_retry_after(retry_after, now))
    return Outcome("reject", f"http-{status}", detail)


def from_error(error: BaseException) -> Outcome:
    """No answer: always worth another try."""
    if isinstance(error, TimeoutError):
        return Outcome("retry", "timeout", "webhook did not answer in time")
    text = str(error) or type(error).__name__
    return Outcome("retry", "connection", f"webhook unreachable: {text[:MAX_EXCERPT]}")


def backoff(attempt: int, initial: float, maximum: float, jitter: float) -> float:
    """Wait after failed attempt number ``attempt`` (1, 2, ...): doubling from ``initial`` up
    to ``maximum``, then scaled into its upper half by ``jitter`` in [0, 1), so that several
    BackData pods do not retry in lockstep yet each waits at least half the nominal time."""
    exponent = min(max(attempt - 1, 0), 62)
    nominal = min(maximum, initial * math.ldexp(1.0, exponent))
    return nominal * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def retry_delay(
    attempt: int, outcome: Outcome, initial: float, maximum: float, jitter: float
) -> float:
    """Our backoff, or longer if the server asked for it with Retry-After."""
    delay = backoff(attempt, initial, maximum, jitter)
    if outcome.retry_after is not None:
        delay = max(delay, outcome.retry_after)
    return delay
