"""The Transformer's header reading and DKIM field choice against their plain readings:
``split_message``'s one-pass path against the line-by-line one, and the cached choice of
signed fields (``dkim._layout``) against RFC 6376 §5.4.2 read field by field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manycore_common import rawheaders
from manycore_transformer import bodycanon, dkim, headers
from manycore_transformer.headers import Field, make_field, split_message
from manycore_transformer.transform import SIGNED_HEADERS
from tests.dkimcheck import dkimpy_results
from tests.helpers import rsa_pem

RSA = dkim.load_key(rsa_pem(label="unit"))
RECORDS = {"mailer._domainkey.example.com": RSA.public_record()}

_PIECES = [b"From", b"to", b"X-A", b"a b", b"\xc3\xa9", b":", b": ", b" ", b"\t", b"v", b"\r\n",
           b"\n", b"\r", b"\r\n ", b"\r\n\t", b"::"]  # fmt: skip


def line_by_line(header: bytes) -> list[tuple[str, bytes]] | str:
    try:
        return [(f.name, f.raw) for f in headers._fields(header)]
    except ValueError as exc:
        return str(exc)


@given(st.lists(st.sampled_from(_PIECES), max_size=30))
def test_split_message_reads_every_header_as_the_line_by_line_reading(parts: list[bytes]) -> None:
    header = b"".join(parts)
    data = header + b"\r\n\r\nbody\r\n"
    whole, _, rest = rawheaders.split(data)
    expected = line_by_line(whole if whole.endswith(b"\r\n") else whole + b"\r\n")
    try:
        fields, body = split_message(data)
    except ValueError as exc:
        assert str(exc) == expected
        return
    assert [(f.name, f.raw) for f in fields] == expected
    assert body == rest


def test_split_message_takes_the_one_pass_path_for_well_formed_fields() -> None:
    data = b"From: a@example.com\r\nSubject: x\r\n  y\r\n\tz\r\nX-Y:\r\n\r\nbody"
    fields, body = split_message(data)
    assert [(f.name, f.key) for f in fields] == [("From", "from"), ("Subject", "subject"),
                                                 ("X-Y", "x-y")]  # fmt: skip
    assert fields[1].raw == b"Subject: x\r\n  y\r\n\tz\r\n" and body == b"body"
    with pytest.raises(ValueError, match="malformed header line"):
        split_message(b"From: a\r\nBad Name: x\r\n\r\n")


def select_field_by_field(
    keys: list[str], names: tuple[str, ...], oversign: tuple[str, ...]
) -> tuple[str, list[int]]:
    """RFC 6376 §5.4.2 as the signer read it before: bottom-up instances, oversigned names
    once more."""
    h: list[str] = []
    chosen: list[int] = []
    for name in names:
        positions = [i for i, k in enumerate(keys) if k == name]
        for i in reversed(positions):
            h.append(name)
            chosen.append(i)
        if name in oversign and positions:
            h.append(name)
    return ":".join(h), chosen


@given(st.lists(st.sampled_from(["from", "to", "subject", "x-a", "date", "cc"]), max_size=12))
def test_layout_chooses_as_rfc_6376_reads(keys: list[str]) -> None:
    names = ("from", "to", "cc", "subject", "date")
    h, positions = dkim._layout(tuple(keys), names, ("from",))
    assert (h, list(positions)) == select_field_by_field(keys, names, ("from",))


def test_copies_with_one_layout_each_sign_their_own_fields() -> None:
    """Two copies of one message share the cached layout and tag list; each signature covers
    its own copy's fields (a repeated To signed bottom-up) and verifies with dkimpy."""
    body = b"Hello\r\n"
    bh = bodycanon.body_hash(body)
    signed = []
    for rcpt in ("alice@example.net", "bob@example.net"):
        fields: list[Field] = [
            make_field("Message-ID", f"<{rcpt}>"),
            make_field("From", "Shop <news@example.com>"),
            make_field("To", rcpt),
            make_field("To", "  other@example.net\t"),
            make_field("Subject", "Your  order"),
        ]
        sig = dkim.sign(fields, bh, key=RSA, domain="example.com", selector="mailer",
                        timestamp=1_764_290_000, header_names=SIGNED_HEADERS)  # fmt: skip
        message = b"".join([sig.raw, *(f.raw for f in fields), b"\r\n", body])
        assert dkimpy_results(message, RECORDS) == [True]
        signed.append((sig.raw, message))
    tags = signed[0][0].replace(b"\r\n\t", b" ")
    assert b" h=from:from:to:to:subject:message-id;" in tags  # From oversigned (§8.15)
    assert signed[0][0] != signed[1][0]
    # One copy's signature on the other copy's fields does not verify.
    swapped = signed[1][1].replace(signed[1][0], signed[0][0])
    assert dkimpy_results(swapped, RECORDS) == [False]


@given(
    name=st.sampled_from(["Subject", "FROM", "x-a", "Content-Type"]),
    value=st.lists(
        st.sampled_from([b"a", b" ", b"  ", b"\t", b"\r\n ", b"\r\n\t", b"x y", b":"]),
        max_size=12,
    ).map(b"".join),
)
def test_relaxed_field_and_its_memory_agree_with_relaxed_header(name: str, value: bytes) -> None:
    raw = name.encode() + b":" + value + b"\r\n"
    expected = dkim.relaxed_header(name, value + b"\r\n")
    # Twice: the second field of the same bytes is answered from dkim._SEEN.
    assert dkim.relaxed_field(Field(name, raw)) == expected
    assert dkim.relaxed_field(Field(name, raw)) == expected
    assert dkim.relaxed_new(Field(name, raw)).relaxed == expected
