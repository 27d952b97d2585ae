"""validate()'s fast paths give exactly what the stdlib parsers give.

validate() reads most header sections with a lean scanner and most address values with one
regular expression, and leaves everything else to compat32's parser and getaddresses(). Here
the two are compared on crafted and random input: the header fields the scanner reads, the
addresses, and the whole outcome (the Accepted, or every field of the MessageRejected).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from manycore_common.message import (
    _SIMPLE_MAILBOX,
    Accepted,
    MessageRejected,
    _addresses,
    _fields_fast,
    _fields_stdlib,
    _validate,
    header_section,
)

LIMIT = 1_000_000
DIFFERENTIAL = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Outcome = Accepted | tuple[str, int, str, str, int]


def outcome(data: bytes, *, fast: bool) -> Outcome:
    try:
        return _validate(data, LIMIT, fast=fast)
    except MessageRejected as failure:
        return (
            failure.reason,
            failure.smtp_code,
            failure.enhanced,
            failure.text,
            failure.http_status,
        )


def assert_same(data: bytes) -> None:
    head = header_section(data)
    fields = _fields_fast(head)
    if fields is not None:
        # The scanner only answers for sections compat32 reads without a defect.
        assert fields == _fields_stdlib(head)
    assert outcome(data, fast=True) == outcome(data, fast=False)


# --- the fast paths are taken for ordinary messages ------------------------------------


#: The shape of bench.ingest's message, the one the speed-up was measured on.
ORDINARY = (
    b"From: Shop <news@example.com>\r\n"
    b"To: Alice <alice@example.net>\r\n"
    b"Subject: Benchmark message\r\n"
    b"X-Uuid: abc123\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + (b"x" * 76 + b"\r\n") * 64
)


def test_an_ordinary_message_takes_the_fast_header_path() -> None:
    data = ORDINARY
    assert _fields_fast(header_section(data)) == {
        "from": ["Shop <news@example.com>"],
        "to": ["Alice <alice@example.net>"],
        "x-uuid": ["abc123"],
    }
    assert_same(data)


@pytest.mark.parametrize(
    ("value", "simple"),
    [
        ("news@example.com", True),
        ("<news@example.com>", True),
        ("Shop <news@example.com>", True),
        ("Shop Ltd. <news@example.com>", True),
        ('"Shop" <news@example.com>', True),
        ('"news@example.com" <news@example.com>', True),
        ("J\u00f6rg <j\u00f6rg@ex\u00e4mple.de>", True),
        ('"Shop, Ltd." <news@example.com>', False),  # a comma: the general path
        ("news@example.com (Shop)", False),  # a comment
        ("Shop\r\n <news@example.com>", False),  # folded
    ],
)
def test_usual_mailboxes_take_the_fast_address_path(value: str, simple: bool) -> None:
    assert (_SIMPLE_MAILBOX.fullmatch(value) is not None) == simple
    [address] = _addresses([value], fast=True)
    assert [address] == _addresses([value], fast=False)
    assert address == "news@example.com" or address == "j\u00f6rg@ex\u00e4mple.de"


# --- header sections --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "fast"),
    [
        (b"X-Uuid: ab\nFrom: a@b.c\nTo: d@e.f\n\nbody", True),  # LF only
        (b"X-Uuid: ab\r\nFrom: a@b.c\nTo: d@e.f\r\n\nbody", True),  # mixed line endings
        (b"X-Uuid:ab\r\nFrom:a@b.c\r\nTo:d@e.f\r\n\r\n", True),  # no space after the colon
        (b"X-Uuid: ab  \t\r\nFrom: a@b.c \r\nTo: d@e.f\t\r\n\r\n", True),  # trailing whitespace
        (b"X-Uuid: ab\r\nFrom: Shop\r\n <a@b.c>\r\nTo:\r\n\td@e.f\r\n\r\n", True),  # folded
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: \t \r\n d@e.f\r\n \r\n\r\n", True),  # blank first line
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo:\r\nCc: d@e.f\r\n\r\n", True),  # empty value
        (b"X-Uuid: ab\r\nFrom: J\xc3\xb6rg <j\xc3\xb6rg@b.c>\r\nTo: d@e.f\r\n\r\n", True),  # UTF-8
        (  # not UTF-8
            b"X-Uuid: ab\r\nFrom: \xff\xc3 <a@b.c>\r\nTo: d@\xe2\x80\xa8e.f\r\n\r\n",
            True,
        ),
        (b"x-uuid: ab\r\nFROM: a@b.c\r\ntO: d@e.f\r\nCC: D@E.F\r\n\r\n", True),  # case
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f\r\nto: g@h.i\r\n\r\n", True),  # repeated To
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f\r\nContent-Type: multipart/mixed\r\n\r\n", True),
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f\n\r\nbody\n\nmore", True),  # ends at "\n\r\n"
        (  # an mbox envelope line first
            b"From a@b.c Mon Jan 1 00:00:00 2026\r\nX-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e\r\n\r\n",
            False,
        ),
        (b"X-Uuid: ab\r\nFrom a@b.c\r\nTo: d@e.f\r\n\r\n", False),  # misplaced envelope line
        (b" X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f\r\n\r\n", False),  # continuation first
        (b"X-Uuid: ab\r\n: x\r\nFrom: a@b.c\r\nTo: d@e.f\r\n\r\n", False),  # no field name
        (b"X-Uuid: ab\r\nno colon\r\nFrom: a@b.c\r\nTo: d@e.f\r\n\r\n", False),
        (b"X-Uuid: ab\rFrom: a@b.c\r\nTo: d@e.f\r\n\r\n", False),  # lone CR
        (b"X-Uuid: ab\r\nFrom: a@b.c\x00\r\nTo: d@e.f\r\n\r\n", False),  # NUL
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f", False),  # no end, no final line break
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f\r\n", False),  # no end
        (b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f\r\n\r", False),  # ends with a lone CR
        (b"X-Uuid: ab\r\nX\xc3\xa9: 1\r\nFrom: a@b.c\r\nTo: d@e.f\r\n\r\n", False),  # 8-bit name
        (b"", False),
        (b"\r\n", True),
        (b"\n", True),
    ],
)
def test_header_sections(head: bytes, fast: bool) -> None:
    """``fast``: the scanner answers; otherwise it declines and compat32 decides."""
    assert (_fields_fast(header_section(head)) is not None) == fast
    assert_same(head)


WANTED = ["X-Uuid", "X-Priority", "X-Stream-Id", "From", "To", "Cc"]
OTHER_NAMES = [b"Subject", b"Content-Type", b"X-Other", b"From ", b"", b"X Y", b"X\xc3\xa9", b">"]
#: Whole mailbox values, in the usual forms and less usual ones.
MAILBOXES = [
    b"news@example.com",
    b"<news@example.com>",
    b"Shop <news@example.com>",
    b'"Shop" <news@example.com>',
    b'"Last, First" <x@y.z>',
    b'"a@b" <A@B>',
    b"J\xc3\xb6rg <j\xc3\xb6rg@ex\xc3\xa4mple.de>",
    b"Shop\r\n <news@example.com>",
    b"a@b (comment)",
    b"Team: a@b.c, d@e.f;",
    b"undisclosed-recipients:;",
    b"",
]
UUIDS = [
    b"abc123",
    b"abc123 \t",
    b"abc123\r\n ",
    b"ab\xc3\xa9",
    b"",
    b"Abc",
    b"a" * 58,
    b"a" * 37,
    b"9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c",
    b"9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c ",
    b"-abc",
    b"abc-",
]
PRIORITIES = [b"0", b"1", b" 1 ", b"2", b"", b"0\r\n "]
STREAM_IDS = [b"spring.1", b"spring.1 ", b"x{{y}}", b"", b"a b", b"s" * 101]
#: Pieces of values, safe ones (no line structure) and ones that may break the section.
SAFE_PIECES = [
    b"a@b.c",
    b"abc123",
    b"Shop",
    b"0",
    b"1",
    b"<",
    b">",
    b'"',
    b"\\",
    b",",
    b";",
    b":",
    b"@",
    b".",
    b" ",
    b"\t",
    b"(",
    b")",
    b"[",
    b"]",
    b"\xff",
    b"\xc3",
    b"\xc2\xa0",
    b"\xe2\x80\xa8",
    b"=?utf-8?q?x?=",
    b"\r\n ",  # folding (RFC 5322 §2.2.3)
    b"\n\t",
]
RISKY_PIECES = [b"\x00", b"\x0b", b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\n"]


@st.composite
def field_names(draw: st.DrawFn, names: list[str]) -> bytes:
    name = draw(st.sampled_from(names))
    # Field names are case-insensitive: any mix of cases.
    flips = draw(st.integers(0, 2 ** len(name) - 1))
    return "".join(c.swapcase() if flips >> i & 1 else c for i, c in enumerate(name)).encode()


def pieces(risky: bool) -> st.SearchStrategy[bytes]:
    choices = SAFE_PIECES + RISKY_PIECES if risky else SAFE_PIECES
    return st.lists(st.sampled_from(choices), max_size=6).map(b"".join)


def addresses_value() -> st.SearchStrategy[bytes]:
    member = st.sampled_from(MAILBOXES) | pieces(risky=False)
    return st.lists(member, min_size=1, max_size=3).map(b", ".join)


@st.composite
def header_line(draw: st.DrawFn, name: str, good: bytes, value: st.SearchStrategy[bytes]) -> bytes:
    field = draw(field_names([name]))
    gap = draw(st.sampled_from([b"", b" ", b"  ", b"\t"]))
    return field + b":" + gap + draw(st.just(good) | value)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Mostly the headers validate() wants, each with a good value or a crafted one, among
    other fields, with CRLF or LF endings; some sections broken in some way."""
    lines: list[bytes] = []
    for name, good, value, percent in [
        ("X-Uuid", b"abc123", st.sampled_from(UUIDS) | pieces(risky=False), 95),
        ("From", b"Shop <news@example.com>", addresses_value(), 95),
        ("To", b"alice@example.net", addresses_value(), 95),
        ("Cc", b"Bob <bob@example.org>", addresses_value(), 50),
        ("X-Priority", b"0", st.sampled_from(PRIORITIES) | pieces(risky=False), 20),
        ("X-Stream-Id", b"spring.1", st.sampled_from(STREAM_IDS) | pieces(risky=False), 20),
    ]:
        if draw(st.integers(0, 99)) < percent:
            lines.append(draw(header_line(name, good, value)))
    for _ in range(draw(st.integers(0, 3))):
        # Another field (maybe one of the wanted ones again), or a broken line.
        other = draw(field_names(WANTED) | st.sampled_from(OTHER_NAMES))
        text = draw(pieces(risky=draw(st.integers(0, 3)) == 0))
        lines.insert(draw(st.integers(0, len(lines))), other + b": " + text)
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    ends = [draw(st.sampled_from([eol, eol, eol, b"\r\n", b"\n"])) for _ in lines]
    end = draw(st.sampled_from([eol, eol, eol, b"", b"\r"]))
    body = draw(st.sampled_from([b"", b"Hello\r\n", b"x\n\r\n", b"A: b\r\n\r\n"]))
    return b"".join(line + end_ for line, end_ in zip(lines, ends, strict=True)) + end + body


@settings(DIFFERENTIAL, max_examples=300)  # each example is costlier to draw
@given(messages())
def test_crafted_messages_fast_equals_stdlib(data: bytes) -> None:
    assert_same(data)


@DIFFERENTIAL
@given(st.binary(max_size=300))
@example(b"X-Uuid: ab\r\nFrom: a@b.c\r\nTo: d@e.f\r\n\r\n")
def test_random_bytes_fast_equals_stdlib(data: bytes) -> None:
    assert_same(data)


LINE_PIECES = [b"a", b"A", b":", b" ", b"\t", b"\r", b"\n", b"\x80"]


@DIFFERENTIAL
@given(st.lists(st.sampled_from(LINE_PIECES), max_size=40))
def test_random_line_structure_fast_equals_stdlib(parts: list[bytes]) -> None:
    assert_same(b"".join(parts))


# --- address values ---------------------------------------------------------------------

ADDRESS_PIECES = [
    "a",
    "news",
    "example.com",
    "J\u00f6rg",
    "Shop",
    "Shop Ltd.",
    '"Quoted Name"',
    '"a@b"',
    "@",
    ".",
    "..",
    "<",
    ">",
    '"',
    "\\",
    ",",
    ";",
    ":",
    "(",
    ")",
    "[",
    "]",
    " ",
    "\t",
    "\r\n ",
    "\xa0",
    "\u2003",
    "\x0b",
    "\ufffd",
    "Group:",
    "undisclosed-recipients:;",
]


@DIFFERENTIAL
@given(st.lists(st.sampled_from(ADDRESS_PIECES), max_size=12))
@example(["<", "a", "@", "b", ">"])
@example(["a", "@", "b", " ", "<", "c", "@", "d", ">"])
@example(["<", "a", "@", "b", ">", " ", "x"])
@example(["\xa0", "<", "a", "@", "b", ">"])
@example(['"', "\\", '"', '"', " ", "<", "a", "@", "b", ">"])
def test_crafted_addresses_fast_equals_stdlib(parts: list[str]) -> None:
    value = "".join(parts)
    assert _addresses([value], fast=True) == _addresses([value], fast=False)


@DIFFERENTIAL
@given(st.text(max_size=60))
def test_random_addresses_fast_equals_stdlib(value: str) -> None:
    assert _addresses([value], fast=True) == _addresses([value], fast=False)
