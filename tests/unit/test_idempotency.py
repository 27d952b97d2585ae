"""The pure parts of idempotent submission: what a message claims, and the Idempotency-Key
header's rules (draft-ietf-httpapi-idempotency-key-header)."""

from __future__ import annotations

import pytest

from manycore_common.idempotency import (
    Earlier,
    body_digest,
    claim_for,
    parse_idempotency_key,
    read_claim,
    reused_for_another,
)
from manycore_common.message import MessageRejected


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ([], None),
        (["8e03978e-40d5-43e8-bc93-6894a57f9324"], "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        # The draft's form: an RFC 8941 String, quotes and escapes taken off.
        (['"8e03978e-40d5"'], "8e03978e-40d5"),
        ([r'"say \"hi\" \\ there"'], 'say "hi" \\ there'),
        (["  padded\t"], "padded"),
        (["k" * 255], "k" * 255),
        (["with inner spaces and !#$%&'()*+,-./:;<=>?@[]^_`{|}~"], None),
    ],
)
def test_valid_keys(values: list[str], key: str | None) -> None:
    expected = values[0] if key is None and values else key
    assert parse_idempotency_key(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        [""],
        ['""'],
        ["   "],
        ["k" * 256],
        ['"' + "k" * 256 + '"'],
        ["caf\u00e9"],
        ["tab\tinside"],
        ["nul\x00"],
        ["del\x7f"],
        ["one", "two"],
    ],
)
def test_invalid_keys_are_refused_with_400(values: list[str]) -> None:
    with pytest.raises(MessageRejected) as refused:
        parse_idempotency_key(values)
    assert refused.value.http_status == 400
    assert refused.value.reason == "bad-idempotency-key"
    assert "Idempotency-Key" in refused.value.text


def test_window_zero_claims_nothing() -> None:
    assert claim_for("abc", 1, 0) is None
    assert claim_for("abc", 1, 0, idempotency_key="k", login="apa") is None


def test_an_x_uuid_is_claimed_for_the_customer_whatever_the_login() -> None:
    first = claim_for("order-1", 0, 86400)
    assert first is not None
    assert first == claim_for("order-1", 0, 86400, login="other")
    assert first.value == b"0" and first.window == 86400
    assert first.key.startswith("idem:")
    assert first.key != claim_for("order-2", 0, 86400).key  # type: ignore[union-attr]


def test_an_idempotency_key_is_claimed_per_login_apart_from_x_uuids() -> None:
    mine = claim_for("u1", 1, 60, idempotency_key="order-1", login="apa")
    theirs = claim_for("u1", 1, 60, idempotency_key="order-1", login="citron")
    as_uuid = claim_for("order-1", 1, 60)
    assert mine is not None and theirs is not None and as_uuid is not None
    assert len({mine.key, theirs.key, as_uuid.key}) == 3
    # The login and the key cannot run into each other.
    shifted = claim_for("u1", 1, 60, idempotency_key="1-order", login="apa\0k")
    assert shifted is not None and shifted.key != mine.key
    assert mine.value == b"1#" + body_digest(b"") + b"u1"


def test_keys_are_short_whatever_is_claimed() -> None:
    lengths = {
        len(claim.key)
        for claim in (
            claim_for("a", 1, 60),
            claim_for("a" * 36, 1, 60),
            claim_for("a", 1, 60, idempotency_key="k" * 255, login="l" * 100),
        )
        if claim is not None
    }
    assert lengths == {len("idem:") + 22}


def test_read_claim_gives_back_what_was_claimed() -> None:
    by_uuid = claim_for("abc", 0, 60)
    by_key = claim_for("abc", 1, 60, idempotency_key="k", login="apa")
    assert by_uuid is not None and by_key is not None
    assert read_claim(by_uuid.value) == Earlier(0, None)
    assert read_claim(by_key.value) == Earlier(1, "abc", body_digest(b""))
    assert read_claim(b"?") == Earlier(1, None)  # not ours: the default answer
    # A key claim written before digests existed: its X-Uuid only.
    assert read_claim(b"0abc") == Earlier(0, "abc")


def test_a_key_claim_keeps_the_body_digest_within_44_bytes() -> None:
    uuid = "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c"
    claim = claim_for(uuid, 1, 60, idempotency_key="k", login="apa", body=b"message one")
    assert claim is not None and len(claim.value) == 44  # Redis' embstr limit
    earlier = read_claim(claim.value)
    assert earlier.uuid == uuid and earlier.digest == body_digest(b"message one")
    assert not reused_for_another(earlier, uuid, b"message one")
    assert reused_for_another(earlier, uuid, b"message two")
    assert reused_for_another(earlier, "other", b"message one")
    # Digest octets that look like the mark or a digit do not confuse the reading.
    for body in (b"a", b"b", b"c" * 1000, bytes(range(256))):
        made = claim_for("u-1", 0, 60, idempotency_key="k", body=body)
        assert made is not None and read_claim(made.value) == Earlier(0, "u-1", body_digest(body))
