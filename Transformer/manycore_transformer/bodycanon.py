"""Line endings and DKIM body canonicalization (RFC 6376 §3.4.3 simple, §3.4.4 relaxed) with
the body hash (§3.7), in a few passes of C over the whole body and never a Python loop over
its lines (pure functions).

The cost that matters is passes over a large body. CPython finds a single byte with
``memchr``, at next to no cost, but walks a body byte by byte to find or count a pattern of
two or more bytes: each such check is as dear as hashing the body, and there are five
(CRLF, CR and LF for the line endings; two SP, and SP before CRLF for relaxed). StringZilla
(Apache-2.0) does them with SIMD instructions, more than ten times faster; a plain body then
costs these checks, the hash and nothing else.

A body with tabs or runs of spaces (indented HTML) is canonicalized by ``bytes.translate``
and ``bytes.replace`` (each C over the whole body) rather than a regular expression, which
walks it several times slower.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Literal

import stringzilla

CRLF = b"\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_TAB_TO_SP = bytes.maketrans(b"\t", b" ")

Canonicalization = Literal["relaxed", "simple"]


# StringZilla's functions themselves, not wrapped in ours: a Python call each would cost
# about as much as its SIMD pass over a 5 KB body.
_count = stringzilla.count
_find = stringzilla.find


def normalize(data: bytes) -> bytes:
    """``data`` with every line ending as CRLF (RFC 5322 §2.1: the form that is signed and
    sent); a bare CR or LF becomes one."""
    crlf: int = _count(data, CRLF)
    if _count(data, b"\r") == crlf == _count(data, b"\n"):
        return data  # nearly every message
    return _LINE_END.sub(CRLF, data)


def relaxed_as_is(body: bytes) -> bool:
    """Whether relaxed canonicalization leaves every line of ``body`` as it is: no tab, no
    run of WSP, no WSP before a CRLF."""
    return bool(b"\t" not in body and _find(body, b"  ") < 0 and _find(body, b" \r\n") < 0)


def _as_sent(body: bytes) -> bytes:
    """The body with a CRLF at its end, as SMTP sends it (RFC 5321 §4.1.1.4); RFC 6376 adds
    the same CRLF to a non-empty body without one. A copy, but only of such a body."""
    return body + CRLF if body and not body.endswith(CRLF) else body


def _collapse_wsp(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 inside the lines: every run of WSP to one SP, none before a CRLF. A
    tab is a run of its own, so tabs become SP first; each replace then halves every run of
    SP, so a run of n takes log2(n) passes (a few for indented HTML)."""
    if b"\t" in body:
        body = body.translate(_TAB_TO_SP)
    while True:
        shorter = body.replace(b"  ", b" ")
        if len(shorter) == len(body):
            return body.replace(b" \r\n", CRLF)
        body = shorter


def _rstrip_end(body: bytes, chars: bytes, end: int) -> int:
    """``len(body[:end].rstrip(chars))``, in C, on ever larger windows at the end rather than
    a copy of the whole body (or a Python loop over a long run of empty lines)."""
    window = 256
    while end:
        start = max(0, end - window)
        kept = len(body[start:end].rstrip(chars))
        if kept:
            return start + kept
        end = start
        window *= 2
    return 0


def content_end(body: bytes) -> int:
    """Where the content of ``body`` (empty, or ending with CRLF) ends once every CRLF at
    its end is dropped: the empty lines at the end (RFC 6376 §3.4.3) and the CRLF of the
    last line. Only whole CRLF pairs go; a bare CR or LF is a byte of its line."""
    end = _rstrip_end(body, CRLF, len(body))
    run = len(body) - end
    if run % 2 == 0 and body.endswith(CRLF * (run // 2)):
        return end  # always, for a body with CRLF line ends only
    # The run of CR and LF holds a bare one: the pairs that go are those after the last two
    # equal bytes in a row (a CRLF pair alternates), starting with a CR.
    tail = body[end:]
    cut = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    if tail[cut : cut + 1] == b"\n":
        cut += 1
    return end + cut


def relaxed_parts(body: bytes) -> tuple[bytes, int]:
    """(a buffer, an end): the relaxed canonical body is ``buffer[:end]`` and a CRLF, or
    empty when ``end`` is 0. An end rather than a slice, so a large body is hashed in place."""
    sent = _as_sent(body)
    if not relaxed_as_is(sent):
        sent = _collapse_wsp(sent)
    return sent, content_end(sent)


def relaxed_body(body: bytes) -> bytes:
    """The relaxed canonical body: a non-empty one ends with exactly one CRLF."""
    buffer, end = relaxed_parts(body)
    return buffer[:end] + CRLF if end else b""


def simple_body(body: bytes) -> bytes:
    """The simple canonical body: the empty lines at the end dropped; an empty body is one
    CRLF."""
    sent = _as_sent(body)
    return sent[: content_end(sent)] + CRLF


def body_hash(body: bytes, canonicalization: Canonicalization = "relaxed") -> str:
    """bh= (RFC 6376 §3.7): SHA-256 of the canonical body, hashed in place (no copy of a
    large body). Only "relaxed" is signed today; "simple" is here for verifying others'."""
    if canonicalization == "simple":
        buffer = _as_sent(body)
        end = content_end(buffer)
    elif len(body) > 2 and body.endswith(CRLF) and body[-3] != 10 and relaxed_as_is(body):
        # Nearly every body: its last line has content (the byte before its CRLF is no LF)
        # and no line has WSP to change (relaxed_as_is), so the canonical body is the body.
        return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    else:
        buffer, end = relaxed_parts(body)
    digest = hashlib.sha256(memoryview(buffer)[:end])
    if end or canonicalization == "simple":
        digest.update(CRLF)
    return base64.b64encode(digest.digest()).decode("ascii")
