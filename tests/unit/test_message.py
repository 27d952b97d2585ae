"""The front door's validation, as a pure function."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manycore_common.message import MessageRejected, extract_recipients, header_section, validate
from tests.integration.conftest import build_message

LIMIT = 1_000_000
#: A version-4 UUID as uuid.uuid4() prints it. Fixed, not drawn at import: pytest-xdist's
#: workers each collect the suite and must find the same test ids.
V4_UUID = "3f2c8a1e-6b4d-4e9a-9c7b-1d2e3f4a5b6c"


def rejected(data: bytes, limit: int = LIMIT) -> MessageRejected:
    with pytest.raises(MessageRejected) as failure:
        validate(data, limit)
    return failure.value


def test_accepts_a_good_message() -> None:
    accepted = validate(build_message("abc123", "0", stream_id="spring_2026.v1"), LIMIT)
    assert accepted.uuid == "abc123"
    assert accepted.priority == 0
    assert accepted.stream_id == "spring_2026.v1"
    assert accepted.from_address == "news@example.com"
    assert accepted.recipients == ("alice@example.net", "bob@example.org", "carol@example.org")


@pytest.mark.parametrize(
    "uuid",
    ["a", "0", "a" * 36, V4_UUID, "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c", "a-b--c"],
)
def test_accepts_lower_case_uuids_with_inner_hyphens(uuid: str) -> None:
    # RFC 4122 UUIDs as most clients print them (issue 22); 36 is what fits a 64-octet
    # local part next to the feedback tag (manycore_common.feedbacktag).
    assert validate(build_message(uuid), LIMIT).uuid == uuid


@pytest.mark.parametrize(
    "uuid",
    [
        "a" * 37,
        V4_UUID + "0",
        V4_UUID.upper(),
        "-abc",
        "abc-",
        "-",
        "a_b",
        "a.b",
        "{9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c}",
    ],
)
def test_refuses_uuids_outside_the_rule_naming_it(uuid: str) -> None:
    failure = rejected(build_message(uuid))
    assert failure.reason == "bad-uuid" and failure.http_status == 400
    assert failure.smtp_reply == (
        "550 5.6.0 Invalid X-Uuid header: use 1 to 36 characters of a-z, 0-9 and '-', "
        "not starting or ending with '-' (a lower-case RFC 4122 UUID fits)"
    )


def test_priority_defaults_to_1() -> None:
    assert validate(build_message("a"), LIMIT).priority == 1
    assert validate(build_message("a", "1"), LIMIT).priority == 1


@pytest.mark.parametrize(
    ("data", "reason", "reply"),
    [
        (build_message(None), "missing-uuid", "550 5.6.0 Missing X-Uuid header"),
        (build_message(""), "missing-uuid", "550 5.6.0 Missing X-Uuid header"),
        (build_message("Abc"), "bad-uuid", "550 5.6.0 Invalid X-Uuid header"),
        (build_message("abc def"), "bad-uuid", "550 5.6.0 Invalid X-Uuid header"),
        (build_message("a" * 37), "bad-uuid", "550 5.6.0 Invalid X-Uuid header"),
        (build_message("ab", "5"), "bad-priority", "550 5.6.0 Invalid X-Priority header"),
        (build_message("ab", "3 (Normal)"), "bad-priority", "550 5.6.0 Invalid X-Priority"),
        (build_message("ab", stream_id="x{{y}}"), "bad-stream-id", "550 5.6.0 Invalid X-Stream-Id"),
        (build_message("ab", sender="a@b.c, d@e.f"), "bad-from", "550 5.1.7 From header"),
        (build_message("ab", sender="plainname"), "bad-from", "550 5.1.7 From header"),
        (build_message("ab", to="x@", cc=None), "bad-recipient", "550 5.1.3 Invalid recipient"),
        (build_message("ab", to="good@x.org, a@b@c", cc=None), "bad-recipient", "550 5.1.3"),
        (build_message("ab", to="Group:;", cc=None), "no-recipients", "550 5.1.3 No recipient"),
        (
            build_message("ab", extra_headers=["X-Priority: 0", "X-Priority: 1"]),
            "bad-headers",
            "550 5.6.0 Header X-Priority appears 2 times",
        ),
        (b"no header separator and no colon", "bad-headers", "550 5.6.0 Malformed header"),
    ],
)
def test_rejections(data: bytes, reason: str, reply: str) -> None:
    failure = rejected(data)
    assert failure.reason == reason
    assert failure.smtp_reply.startswith(reply)
    assert failure.http_status == 400


def test_size_limit() -> None:
    data = build_message("ab")
    assert validate(data, len(data)).uuid == "ab"
    failure = rejected(data, len(data) - 1)
    assert failure.reason == "too-large"
    assert failure.smtp_reply == f"552 5.3.4 Message too big: the limit is {len(data) - 1} bytes"
    assert failure.http_status == 413


def test_recipients_dedupe_and_skip_empty_members() -> None:
    assert extract_recipients(
        ['"Last, First" <x@y.z>, , Y@Z.W,', "undisclosed-recipients:;"], ["y@z.w", "q@r.s"]
    ) == ("x@y.z", "Y@Z.W", "q@r.s")


def test_group_members_are_recipients() -> None:
    assert extract_recipients(["Team: a@b.c, d@e.f;"], []) == ("a@b.c", "d@e.f")


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        validate(data, LIMIT)
    except MessageRejected as failure:
        assert failure.smtp_code in (550, 552)
        assert failure.enhanced.startswith("5.")


@given(st.text(max_size=300))
def test_arbitrary_header_values_never_crash(value: str) -> None:
    clean = value.replace("\r", " ").replace("\n", " ")
    with contextlib.suppress(MessageRejected):
        validate(build_message("ab", to=clean, cc=clean, stream_id=clean or None), LIMIT)


def test_utf8_addresses_survive() -> None:
    accepted = validate(
        build_message("ab", to="J\u00f6rg <j\u00f6rg@ex\u00e4mple.de>", cc=None), LIMIT
    )
    assert accepted.recipients == ("j\u00f6rg@ex\u00e4mple.de",)


def test_empty_group_inside_a_list() -> None:
    assert extract_recipients(["a@x.com, undisclosed-recipients:;"], []) == ("a@x.com",)
    assert extract_recipients(["undisclosed-recipients:;, b@y.org"], []) == ("b@y.org",)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore", b"A: 1\r\nB: 2\r\n\r\n"),
        (b"A: 1\nB: 2\n\nbody\n\nmore", b"A: 1\nB: 2\n\n"),
        (b"A: 1\n\nbody\r\n\r\n", b"A: 1\n\n"),  # the bare-LF end comes first
        (b"A: 1\r\n\r\nbody\n\n", b"A: 1\r\n\r\n"),  # the CRLF end comes first
        (b"A: 1\r\nB: 2\r\n", b"A: 1\r\nB: 2\r\n"),  # no end: all of it
        (b"A: 1\n\r\nbody\r\n\r\n", b"A: 1\n\r\n"),  # an LF line, then a CRLF empty one
        (b"\r\nA: 1\r\n\r\n", b"\r\n"),  # an empty first line: no header fields
    ],
)
def test_header_section_ends_at_the_first_empty_line(data: bytes, expected: bytes) -> None:
    assert header_section(data) == expected


@given(st.lists(st.sampled_from([b"a", b":", b"\r", b"\n", b"\r\n", b"\n\n"]), max_size=40))
def test_header_section_is_the_prefix_up_to_the_first_empty_line(parts: list[bytes]) -> None:
    data = b"".join(parts)
    head = header_section(data)
    assert data.startswith(head)
    # Lines end at LF (rawheaders); the first that holds nothing but its line end ends it.
    offset, end = 0, len(data)
    for line in data.split(b"\n")[:-1]:
        offset += len(line) + 1
        if line in (b"", b"\r"):
            end = offset
            break
    assert len(head) == end


@pytest.mark.parametrize(
    "value", ["abc123\u00a0", "abc123\u2028", "\u00a0abc123", "abc123\x1c", "abc123\x85"]
)
def test_uuid_whitespace_is_stripped_as_the_transformer_strips_it(value: str) -> None:
    # Only ASCII whitespace goes, as in the Transformer's byte-level strip: a no-break space
    # (or another Unicode space) is part of the value, which is then not a valid X-Uuid. The
    # front door refuses it rather than say 250 for a message the Transformer would refuse.
    data = build_message("placeholder").replace(b"placeholder", value.encode())
    assert rejected(data).reason == "bad-uuid"


def test_ascii_whitespace_around_a_uuid_is_stripped() -> None:
    data = build_message("placeholder").replace(b"placeholder", b"abc123 \t\x0b\x0c")
    assert validate(data, LIMIT).uuid == "abc123"


@pytest.mark.parametrize(
    "to",
    [b"a\x00b@example.com", b"a\x01b@example.com", b"Name <a\x7fb@example.com>",
     b"a@exa\x1bmple.com", b"a\xffb@example.com", b"Name <a@exam\xfeple.com>"],
)  # fmt: skip
def test_control_characters_and_undecodable_bytes_are_no_address(to: bytes) -> None:
    data = build_message("abc", to="placeholder@x.org", cc=None).replace(b"placeholder@x.org", to)
    assert rejected(data).reason == "bad-recipient"
