"""Body canonicalization and line endings (``bodycanon``) against straightforward per-line
readings of RFC 6376 §3.4.3/§3.4.4 and RFC 5322 §2.1, on random bodies: WSP at line ends,
empty lines at the end, bare CR and LF, no final CRLF, long runs."""

from __future__ import annotations

import base64
import hashlib
import re

from hypothesis import given
from hypothesis import strategies as st

from manycore_transformer import bodycanon

CRLF = b"\r\n"


def reference_normalize(data: bytes) -> bytes:
    """RFC 5322 §2.1 line ends, one byte at a time: CRLF stays, a bare CR or LF becomes one."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i : i + 2] == CRLF:
            out += CRLF
            i += 2
        elif data[i] in b"\r\n":
            out += CRLF
            i += 1
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def _lines(body: bytes) -> list[bytes]:
    """The lines of the body as sent (a CRLF added to a non-empty body without one), each
    without its CRLF; a bare CR or LF is a byte of its line."""
    if body and not body.endswith(CRLF):
        body += CRLF
    return body.split(CRLF)[:-1]


def _drop_empty_at_end(lines: list[bytes]) -> list[bytes]:
    while lines and lines[-1] == b"":
        lines = lines[:-1]
    return lines


def reference_relaxed(body: bytes) -> bytes:
    """§3.4.4: per line, runs of WSP to one SP and none at the end; empty lines at the end
    dropped; an empty result stays empty."""
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in _lines(body)]
    return b"".join(line + CRLF for line in _drop_empty_at_end(lines))


def reference_simple(body: bytes) -> bytes:
    """§3.4.3: empty lines at the end dropped; an empty body is one CRLF."""
    return b"".join(line + CRLF for line in _drop_empty_at_end(_lines(body))) or CRLF


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


PIECES = [
    b"a",
    b"x.y",
    b" ",
    b"\t",
    b"  ",
    b"\r\n",
    b" \r\n",
    b"\t\r\n",
    b"\r",
    b"\n",
    b"\n\r",
    b"\r\r\n",
    b"\0",
    b"\r\n" * 200,
    b" " * 300,
    b"\t \t",
]
bodies = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join),
    st.binary(max_size=300),
)


@given(bodies)
def test_normalize_matches_the_byte_by_byte_reading(data: bytes) -> None:
    normalized = bodycanon.normalize(data)
    assert normalized == reference_normalize(data)
    if normalized == data:
        assert normalized is data  # no copy of a message that needs none


@given(bodies)
def test_relaxed_and_simple_bodies_and_hashes_match_the_rfc_per_line(body: bytes) -> None:
    relaxed, simple = reference_relaxed(body), reference_simple(body)
    assert bodycanon.relaxed_body(body) == relaxed
    assert bodycanon.simple_body(body) == simple
    assert bodycanon.body_hash(body) == b64sha(relaxed)
    assert bodycanon.body_hash(body, "simple") == b64sha(simple)


@given(bodies)
def test_relaxed_as_is_is_true_exactly_when_no_line_changes(body: bytes) -> None:
    body = reference_normalize(body)
    if body and not body.endswith(CRLF):
        body += CRLF
    unchanged = all(re.sub(rb"[ \t]+", b" ", ln).rstrip(b" ") == ln for ln in _lines(body))
    assert bodycanon.relaxed_as_is(body) == unchanged


def test_long_runs_and_many_empty_lines_at_the_end() -> None:
    big = b"line  with\tspace \r\n" * 40_000 + b" " * 5000 + b"\r\n" * 5000
    assert bodycanon.relaxed_body(big) == reference_relaxed(big)
    assert bodycanon.simple_body(big) == reference_simple(big)
    assert bodycanon.relaxed_body(b"a" + b" " * 100_000 + b"b\r\n") == b"a b\r\n"
    # Only whole CRLF pairs at the end go: a bare LF before them is content.
    assert bodycanon.simple_body(b"a\r\n\n\r\n\r\n") == b"a\r\n\n\r\n"
    assert bodycanon.relaxed_body(b"a\r\r\n\r\n") == b"a\r\r\n"
    assert bodycanon.simple_body(b"") == bodycanon.simple_body(CRLF * 3) == CRLF
    assert bodycanon.relaxed_body(b"") == bodycanon.relaxed_body(b" \r\n\t\r\n") == b""
