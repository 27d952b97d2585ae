from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from manycore_common.unsubscribe import make_token, parse_token

SECRET = b"test-only-secret-0123456789abcdef"


def test_round_trip_with_and_without_stream() -> None:
    assert parse_token(SECRET, make_token(SECRET, "abc123")) == ("abc123", None)
    token = make_token(SECRET, "abc123", "spring-sale")
    assert parse_token(SECRET, token) == ("abc123", "spring-sale")
    assert all(c.isalnum() or c in "-_." for c in token)  # URL-safe as it is


def test_forgeries_are_refused() -> None:
    token = make_token(SECRET, "abc123")
    payload, _, mac = token.partition(".")
    other = make_token(SECRET, "abc124")
    assert parse_token(b"another-secret-0123456789abcdefgh", token) is None
    assert parse_token(SECRET, other.partition(".")[0] + "." + mac) is None  # swapped payload
    assert parse_token(SECRET, payload + "." + ("A" * len(mac))) is None
    assert parse_token(SECRET, payload) is None
    assert parse_token(SECRET, "") is None


@given(st.text(max_size=300))
def test_arbitrary_input_never_crashes(text: str) -> None:
    assert parse_token(SECRET, text) is None
