from __future__ import annotations

import base64
import time

from hypothesis import given
from hypothesis import strategies as st

from manycore_common.unsubscribe import (
    Token,
    make_message_token,
    make_token,
    once_marker,
    parse_token,
    read_token,
)
from manycore_httpreceiver.unsubscribe import expired

SECRET = b"test-only-secret-0123456789abcdef"


def test_round_trip_with_and_without_stream() -> None:
    assert parse_token(SECRET, make_message_token(SECRET, "abc123")) == ("abc123", None)
    token = make_message_token(SECRET, "abc123", "spring-sale")
    assert parse_token(SECRET, token) == ("abc123", "spring-sale")
    assert all(c.isalnum() or c in "-_." for c in token)  # URL-safe as it is


def test_forgeries_are_refused() -> None:
    token = make_message_token(SECRET, "abc123")
    payload, _, mac = token.partition(".")
    other = make_message_token(SECRET, "abc124")
    assert parse_token(b"another-secret-0123456789abcdefgh", token) is None
    assert parse_token(SECRET, other.partition(".")[0] + "." + mac) is None  # swapped payload
    assert parse_token(SECRET, payload + "." + ("A" * len(mac))) is None
    assert parse_token(SECRET, payload) is None
    assert parse_token(SECRET, "") is None


@given(st.text(max_size=300))
def test_arbitrary_input_never_crashes(text: str) -> None:
    assert parse_token(SECRET, text) is None


def untimed_token(secret: bytes, payload: str) -> str:
    """A token as minted before issue times existed (the format of the links already in
    inboxes): base64url(uuid[:stream]) and the MAC under the old label."""
    import base64
    import hashlib
    import hmac

    raw = payload.encode()
    mac = hmac.new(secret, b"manycore-unsubscribe:" + raw, hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(raw)}.{b64(mac)[:32]}"


def test_tokens_carry_their_issue_time() -> None:
    token = make_message_token(SECRET, "abc123", "s1", issued=1_700_000_000)
    assert read_token(SECRET, token) == Token("abc123", "s1", 1_700_000_000)
    now = int(time.time())
    fresh = read_token(SECRET, make_message_token(SECRET, "abc"))
    assert fresh is not None and fresh.issued is not None and abs(fresh.issued - now) <= 2


def test_untimed_tokens_are_still_read_without_a_time() -> None:
    assert read_token(SECRET, untimed_token(SECRET, "abc123:camp")) == Token("abc123", "camp", None)
    assert parse_token(SECRET, untimed_token(SECRET, "abc123")) == ("abc123", None)


def test_an_altered_time_breaks_the_mac() -> None:
    token = make_message_token(SECRET, "abc123", issued=1_700_000_000)
    payload, _, mac = token.partition(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    later = raw.replace(b"1700000000", b"1800000000")
    altered = base64.urlsafe_b64encode(later).rstrip(b"=").decode() + "." + mac
    assert read_token(SECRET, altered) is None


def test_a_timed_payload_under_the_old_label_is_no_timed_token() -> None:
    # Someone holding an untimed token for uuid "1700000000" cannot pass it off as a token
    # for another uuid issued at that time: the labels differ.
    assert read_token(SECRET, untimed_token(SECRET, "1700000000:abc")) == Token(
        "1700000000", "abc", None
    )


def test_expiry_rule() -> None:
    day = 24 * 3600.0
    timed = Token("u", None, 1000)
    untimed = Token("u", None, None)
    assert not expired(timed, 1000 + 90 * day, 90 * day, None)
    assert expired(timed, 1000 + 90 * day + 1, 90 * day, None)
    assert not expired(untimed, 10**12, 90 * day, None)  # nothing known: honoured
    assert not expired(untimed, 5000 + 89 * day, 90 * day, 5000)
    assert expired(untimed, 5000 + 91 * day, 90 * day, 5000)


UUID = "0b5c9f8e-3f7a-4c1e-9a47-2d6f0e8b1c3a"


def test_recipient_tokens_name_the_recipient_and_its_domain() -> None:
    token = make_token(SECRET, UUID, "s1", 1_700_000_000, rcpt="Ann@Example.ORG", domain="ex.com")
    assert read_token(SECRET, token) == Token(
        UUID, "s1", 1_700_000_000, "ann@example.org", "ex.com"
    )
    plain = make_token(SECRET, "abc-1", None, 5, rcpt="b@x.org", domain="ex.com")
    assert read_token(SECRET, plain) == Token("abc-1", None, 5, "b@x.org", "ex.com")
    utf8 = make_token(SECRET, "u1", rcpt="jörg@bücher.de", domain="ex.com")
    found = read_token(SECRET, utf8)
    assert found is not None and found.rcpt == "jörg@xn--bcher-kva.de"
    assert all(c.isalnum() or c in "-_." for c in token)
    # Short enough for a URL in a header: an RFC 4122 uuid is packed into 16 octets.
    assert len(token) <= 110, len(token)


def test_recipient_tokens_cannot_be_turned_into_another_recipients() -> None:
    token = make_token(SECRET, UUID, None, 1_700_000_000, rcpt="ann@example.org", domain="ex.com")
    payload, _, mac = token.partition(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    for swapped in (
        raw.replace(b"ann@", b"bob@"),
        raw.replace(b"ex.com", b"ex.org"),
        raw.replace((1_700_000_000).to_bytes(4, "big"), (1_800_000_000).to_bytes(4, "big")),
    ):
        forged = base64.urlsafe_b64encode(swapped).rstrip(b"=").decode() + "." + mac
        assert read_token(SECRET, forged) is None
    # A per-message token's payload under the recipient token's MAC, and the other way round.
    message = make_message_token(SECRET, UUID, issued=1_700_000_000)
    assert read_token(SECRET, message.partition(".")[0] + "." + mac) is None
    assert read_token(SECRET, payload + "." + message.partition(".")[2]) is None


def test_once_markers_are_per_recipient_and_ignore_spelling() -> None:
    assert once_marker("u1") == "unsubscribed:u1"
    ann = once_marker("u1", "ann@example.org")
    assert ann == once_marker("u1", "<Ann@EXAMPLE.org>")
    assert ann != once_marker("u1", "bob@example.org") and ann.startswith("unsubscribed:u1:r")
