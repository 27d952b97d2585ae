"""The tagged feedback addresses: minted per recipient, verified statelessly."""

from __future__ import annotations

import uuid as uuidlib

from hypothesis import given
from hypothesis import strategies as st

from manycore_common import feedbacktag as ft

KEY = b"k" * 32
OLD = b"o" * 32


def test_round_trip_binds_message_and_recipient() -> None:
    local = ft.make_local_part(KEY, "bounce", "abc123", "Alice@Example.COM", "news-1")
    tag = ft.read_local_part([KEY], local)
    assert tag is not None
    assert (tag.kind, tag.uuid) == ("bounce", "abc123")
    assert tag.names("alice@example.com")
    assert tag.names("<ALICE@example.com>")
    assert not tag.names("victim@gmail.com")
    assert tag.stream_field == ft.stream_field("news-1")
    assert tag.recipient(["x@y.z", "alice@example.com"]) == "alice@example.com"


def test_longest_uuid_fits_64_octets() -> None:
    for uuid in (str(uuidlib.uuid4()), "a" * ft.MAX_UUID_LENGTH):
        local = ft.make_local_part(KEY, "unsub", uuid, "r@example.com")
        assert len(local) <= 64
        tag = ft.read_local_part([KEY], local.upper())  # case folded on the way back
        assert tag is not None and tag.uuid == uuid and tag.kind == "unsub"


def test_forgeries_fail() -> None:
    local = ft.make_local_part(KEY, "bounce", "abc", "r@example.com")
    assert ft.read_local_part([b"x" * 32], local) is None
    # Another kind, uuid or blob: the MAC no longer holds.
    assert ft.read_local_part([KEY], "u" + local[1:]) is None
    assert ft.read_local_part([KEY], local.replace("abc", "abd", 1)) is None
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert ft.read_local_part([KEY], flipped) is None
    assert ft.read_local_part([KEY], "bounce-abc") is None
    assert ft.read_local_part([KEY], "b" + "a" * 80) is None


def test_rotation_accepts_the_old_key() -> None:
    local = ft.make_local_part(OLD, "bounce", "abc", "r@example.com")
    tag = ft.read_local_part([KEY, OLD], local)
    assert tag is not None and tag.names("r@example.com")
    assert ft.read_local_part([KEY], local) is None


def test_idna_and_case_are_one_recipient() -> None:
    local = ft.make_local_part(KEY, "bounce", "abc", "user@Bücher.de")
    tag = ft.read_local_part([KEY], local)
    assert tag is not None and tag.names("USER@xn--bcher-kva.de")


def test_find_tags_in_text_only_at_our_domains() -> None:
    good = ft.make_address(KEY, "bounce", "abc", "r@example.com", "bounce.example.com")
    other = ft.make_address(KEY, "bounce", "def", "r@example.com", "elsewhere.net")
    text = f"Return-Path: <{good}>\nMessage-ID: <{good}>\nX: {other}\n"
    tags = ft.find_tags([KEY], text, ["bounce.example.com"])
    assert [t.uuid for t in tags] == ["abc"]


@given(st.from_regex(ft.UUID_RE, fullmatch=True), st.emails())
def test_any_accepted_uuid_round_trips(uuid: str, rcpt: str) -> None:
    local = ft.make_local_part(KEY, "bounce", uuid, rcpt)
    assert len(local) <= 64
    tag = ft.read_local_part([KEY], local)
    assert tag is not None and tag.uuid == uuid and tag.names(rcpt)


def test_a_message_id_tag_is_never_proof() -> None:
    # Replies copy the Message-ID into References: other recipients of a reply-all see it.
    local = ft.make_local_part(KEY, "message", "abc", "r@example.com")
    assert ft.read_local_part([KEY], local) is None
    assert ft.read_local_part([KEY], "b" + local[1:]) is None  # the kind is inside the MAC
    tag = ft.read_local_part([KEY], local, frozenset({"message"}))
    assert tag is not None and tag.kind == "message" and tag.names("r@example.com")
    text = f"References: <{local}@rp.example.com>\n"
    assert ft.find_tags([KEY], text, ["rp.example.com"]) == []


def test_no_lookalike_folds_into_another_mailbox() -> None:
    """Only ASCII case and one trailing dot are folded: a Kelvin sign, a second trailing
    dot, a zero-width joiner or an IDNA 2003 mapping (ß → ss) is another address, which
    Postfix delivers elsewhere."""
    real = ft.normalize_address("kevin@strasse.de")
    for lookalike in (
        "\u212aevin@strasse.de",
        "kevin@strasse.de..",
        "kevin@stra\u200dsse.de",
        "kevin@straße.de",
    ):
        assert ft.normalize_address(lookalike) != real, lookalike
    assert ft.normalize_address("<KEVIN@Strasse.DE.>") == real
    assert ft.normalize_address("user@Bücher.de") == "user@xn--bcher-kva.de"


def _reference_address(
    key: bytes, prefix: str, uuid: str, rcpt: str, domain: str, stream_id: str | None
) -> str:
    """The tag format as first written (hmac.new, base64.b32encode): the faster path must
    mint the same octets, or every address already sent stops verifying."""
    import base64
    import hashlib
    import hmac

    norm = ft.normalize_address(rcpt).encode()
    fp = hmac.new(key, b"manycore-rcpt:" + norm, hashlib.sha256).digest()[:4]
    stream = hashlib.sha256(stream_id.encode()).digest()[:4] if stream_id else b"\0" * 4
    label = b"manycore-feedback:1:" + f"{prefix}{uuid}.".encode("ascii")
    mac = hmac.new(key, label + fp + stream, hashlib.sha256).digest()[:8]
    blob = base64.b32encode(fp + stream + mac).decode("ascii").rstrip("=").lower()
    return f"{prefix}{uuid}.{blob}@{domain}"


@given(key=st.binary(max_size=200), message=st.binary(max_size=200))
def test_the_keyed_hmac_is_hmac_sha256(key: bytes, message: bytes) -> None:
    import hmac

    # Keys longer than SHA-256's 64-octet block are hashed first (RFC 2104 §2).
    assert ft._hmac_sha256(key)(message) == hmac.digest(key, message, "sha256")


@given(
    key=st.binary(min_size=1, max_size=100),
    uuid=st.from_regex(ft.UUID_RE, fullmatch=True),
    rcpt=st.text(min_size=1, max_size=40),
    stream_id=st.none() | st.text(min_size=1, max_size=30),
    blob=st.binary(min_size=16, max_size=16),
)
def test_copy_tags_match_the_reference_format(
    key: bytes, uuid: str, rcpt: str, stream_id: str | None, blob: bytes
) -> None:
    import base64

    assert ft._b32(blob) == base64.b32encode(blob).decode("ascii").rstrip("=").lower()
    domain = "bounce.example.com"
    tags = ft.make_copy_tags(
        key, uuid, ft.normalize_address(rcpt), domain, ft.stream_hash(stream_id)
    )
    cases: tuple[tuple[ft.Kind, str, str], ...] = (
        ("bounce", "b", tags.bounce),
        ("unsub", "u", tags.unsub),
        ("message", "m", tags.message),
    )
    for kind, prefix, minted in cases:
        expected = _reference_address(key, prefix, uuid, rcpt, domain, stream_id)
        assert minted == expected
        assert ft.make_address(key, kind, uuid, rcpt, domain, stream_id) == expected


def _translated_address(address: str) -> str:
    """normalize_address as it read every address before its all-ASCII path."""
    lower = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.translate(lower)
    domain = domain.translate(lower)
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain.isascii():
        domain = ".".join(ft._ascii_label(label) for label in domain.split("."))
    return f"{local.translate(lower)}@{domain}"


@given(
    st.lists(
        st.sampled_from(["A", "z", "@", ".", " ", "<", ">", "K", "\u212a", "ü", "..", "\t"]),
        max_size=12,
    ).map("".join)
    | st.text(max_size=20)
)
def test_the_ascii_path_normalizes_as_the_translation_did(address: str) -> None:
    assert ft.normalize_address(address) == _translated_address(address)
