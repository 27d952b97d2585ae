"""The one header-section rule (``manycore_common.rawheaders``): split and join lose no byte,
the section ends at the first empty line whatever its line end, and the three places that
read a header section (the front door's validation, the Transformer, PostfixLog) agree."""

from __future__ import annotations

import email.parser
import email.policy
import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from manycore_common import rawheaders
from manycore_common.message import header_section
from manycore_postfixlog import headers as postfixlog_headers
from manycore_transformer.headers import join_message, normalize_line_endings, split_message

#: Pieces a header section is made of, line ends of every kind among them.
PIECES = [b"A", b"b", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"X: 1", b"\xc3\xa9"]
messages = st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join)
#: Messages as the Transformer and PostfixLog get them: fields, then CRLF lines only.
crlf_messages = st.lists(st.sampled_from([*PIECES, b"\r\n\r\n", b"\r\n "]), max_size=30).map(
    lambda parts: normalize_line_endings(b"".join(parts))
)


def first_empty_line(data: bytes) -> int | None:
    """The rule, written the slow obvious way: the offset of the first line (lines end at LF)
    that holds nothing but its line end."""
    offset = 0
    for line in data.split(b"\n")[:-1]:
        if line in (b"", b"\r"):
            return offset
        offset += len(line) + 1
    return None


def is_field(raw: bytes) -> bool:
    """RFC 5322 §2.2 as the Transformer holds it: a name without spaces, then a colon."""
    name, colon, _ = raw.split(b"\r\n")[0].partition(b":")
    return bool(colon and name) and name == name.strip() and b" " not in name


def check_split(data: bytes) -> None:
    header, separator, body = rawheaders.split(data)
    assert rawheaders.join(header, separator, body) == data
    at = first_empty_line(data)
    if at is None:
        assert (header, separator, body) == (data, b"", b"")
    else:
        assert len(header) == at and separator in (b"\n", b"\r\n")
    assert not header or header.endswith(b"\n") or not separator
    assert b"".join(rawheaders.fields(header)) == header


@pytest.mark.parametrize(
    ("data", "parts"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n", (b"A: 1\r\nB: 2\r\n", b"\r\n", b"body\r\n\r\n")),
        (b"A: 1\nB: 2\n\nbody\n\nmore", (b"A: 1\nB: 2\n", b"\n", b"body\n\nmore")),
        (b"A: 1\n\nbody\r\n\r\n", (b"A: 1\n", b"\n", b"body\r\n\r\n")),
        (b"A: 1\r\n\r\nbody\n\n", (b"A: 1\r\n", b"\r\n", b"body\n\n")),
        (b"A: 1\n\r\nbody", (b"A: 1\n", b"\r\n", b"body")),  # LF line, then a CRLF empty line
        (b"A: 1\r\r\nB: 2", (b"A: 1\r\r\nB: 2", b"", b"")),  # "\r\r\n" is no empty line
        (b"\r\nA: 1\r\n\r\n", (b"", b"\r\n", b"A: 1\r\n\r\n")),  # an empty first line
        (b"A: 1\r\nB: 2\r\n", (b"A: 1\r\nB: 2\r\n", b"", b"")),
        (b"", (b"", b"", b"")),
    ],
)
def test_split_at_the_first_empty_line(data: bytes, parts: tuple[bytes, bytes, bytes]) -> None:
    assert rawheaders.split(data) == parts
    check_split(data)


def test_every_short_message_of_line_end_bytes() -> None:
    """Exhaustive over the bytes that make line ends, up to 7 of them."""
    for length in range(8):
        for combo in itertools.product((b"a", b" ", b"\r", b"\n"), repeat=length):
            check_split(b"".join(combo))


@given(messages)
def test_split_and_join_lose_no_byte(data: bytes) -> None:
    check_split(data)


@given(st.binary(max_size=200))
def test_split_any_bytes(data: bytes) -> None:
    check_split(data)


def test_fields_keep_continuations_and_split_only_at_lf() -> None:
    header = b"A: 1\r\n  more\r\nB: 2\rstill B\r\n\tcont\nC: 3"
    assert rawheaders.fields(header) == [
        b"A: 1\r\n  more\r\n",
        b"B: 2\rstill B\r\n\tcont\n",
        b"C: 3",
    ]
    assert rawheaders.fields(b" lead\r\nA: 1\r\n") == [b" lead\r\n", b"A: 1\r\n"]
    assert rawheaders.fields(b"") == []


@given(messages)
def test_the_front_door_reads_the_same_section(data: bytes) -> None:
    """``header_section`` is the section and its empty line; Python's parser (what validation
    falls back to) reads the same fields from it as from the whole message."""
    header, separator, _ = rawheaders.split(data)
    assert header_section(data) == header + separator
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    section = parser.parsebytes(header_section(data)).raw_items()
    assert list(section) == list(parser.parsebytes(data).raw_items())


@given(messages)
def test_postfixlog_reads_the_same_section(data: bytes) -> None:
    """PostfixLog's edits stay inside the section the rule finds: adding X-ReturnPathIb and
    taking it out again gives back the message, byte for byte."""
    header, separator, body = rawheaders.split(data)
    assume(not header.startswith((b" ", b"\t")))  # would continue the added field
    added = postfixlog_headers.add_return_path(data, "b@x.test")
    new_header, new_separator, new_body = rawheaders.split(added)
    assert (new_separator, new_body) == (separator, body)
    assert len(rawheaders.fields(new_header)) == len(rawheaders.fields(header)) + 1
    assert postfixlog_headers.take_return_path(added) == ("b@x.test", data)


@settings(max_examples=300)
@given(crlf_messages)
def test_the_transformer_reads_the_same_section(data: bytes) -> None:
    header, separator, body = rawheaders.split(data)
    try:
        fields, transformer_body = split_message(data)
    except ValueError:
        assert not header or not all(map(is_field, rawheaders.fields(header)))
        return
    assert transformer_body == body
    raw = b"".join(f.raw for f in fields)
    assert raw == (header if header.endswith(b"\r\n") else header + b"\r\n")
    if separator:
        assert join_message(fields, body) == data
