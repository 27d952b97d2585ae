"""BackData's pure decisions: what each answer means, Retry-After, backoff with jitter."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from manycore_backdata import policy

NOW = 1_700_000_000.0


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert policy.from_status(status, b"", None, NOW).verdict == "delivered"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(408, "http-408"), (429, "http-429"), (500, "http-5xx"), (503, "http-5xx"), (599, "http-5xx")],
)
def test_not_now_answers_are_retried(status: int, reason: str) -> None:
    outcome = policy.from_status(status, b"busy", None, NOW)
    assert (outcome.verdict, outcome.reason) == ("retry", reason)
    assert reason in policy.RETRY_REASONS


@pytest.mark.parametrize("status", [301, 302, 307, 400, 401, 403, 404, 405, 413, 422])
def test_other_answers_reject_the_batch_with_the_answer(status: int) -> None:
    outcome = policy.from_status(status, b'{"error":"bad"}', None, NOW)
    assert outcome.verdict == "reject"
    assert outcome.detail == f'webhook answered {status}: {{"error":"bad"}}'


def test_no_answer_is_retried() -> None:
    assert policy.from_error(TimeoutError()).reason == "timeout"
    refused = policy.from_error(ConnectionRefusedError(111, "Connection refused"))
    assert (refused.verdict, refused.reason) == ("retry", "connection")
    assert "Connection refused" in refused.detail


def test_excerpt_is_one_printable_line_of_bounded_length() -> None:
    assert policy.excerpt(b"  line one\r\n\tline two\x00 ") == "line one line two?"
    assert policy.excerpt(b"\xff\xfeok") == "\ufffd\ufffdok"
    assert len(policy.excerpt(b"x" * 10_000)) == policy.MAX_EXCERPT


def test_retry_after_seconds_and_http_date() -> None:
    assert policy.parse_retry_after("120", NOW) == 120
    assert policy.parse_retry_after(" 0 ", NOW) == 0
    later = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    assert policy.parse_retry_after(later, NOW) == pytest.approx(30)
    earlier = format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)
    assert policy.parse_retry_after(earlier, NOW) == 0
    assert policy.parse_retry_after("99999999", NOW) == policy.MAX_RETRY_AFTER
    for junk in (None, "", "soon", "-5", "1.5"):
        assert policy.parse_retry_after(junk, NOW) is None


def test_429_carries_retry_after() -> None:
    outcome = policy.from_status(429, b"", "7", NOW)
    assert outcome.retry_after == 7


def test_backoff_doubles_up_to_the_cap_and_jitter_keeps_the_upper_half() -> None:
    nominal = [policy.backoff(n, 1.0, 30.0, jitter=1.0) for n in range(1, 8)]
    assert nominal == [1, 2, 4, 8, 16, 30, 30]
    assert policy.backoff(3, 1.0, 30.0, jitter=0.0) == 2.0
    assert policy.backoff(10_000, 1.0, 30.0, jitter=0.5) == 22.5  # no overflow


def test_retry_delay_honours_a_longer_retry_after_only() -> None:
    asked = policy.Outcome("retry", "http-429", "", retry_after=60)
    assert policy.retry_delay(1, asked, 1.0, 5.0, jitter=1.0) == 60
    short = policy.Outcome("retry", "http-429", "", retry_after=0)
    assert policy.retry_delay(3, short, 1.0, 5.0, jitter=1.0) == 4
