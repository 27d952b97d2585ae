"""The injector's SMTP pieces that need no server: the content as sent after DATA, reply
parsing, the commands of one pipelined group and what their replies mean."""

from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from manycore_postfixlog.injector import (
    Go,
    Injected,
    PermanentFailure,
    Refused,
    TemporaryFailure,
    sort_replies,
    transaction_commands,
)
from manycore_postfixlog.smtpclient import Reply, content, parse_reply, path

PIECES = [b"a", b".", b"..", b"\r", b"\n", b"\r\n", b" ", b"\xc3\xa9"]


@given(st.lists(st.sampled_from(PIECES), max_size=30))
def test_content_is_byte_for_byte_what_aiosmtplib_sent(parts: list[bytes]) -> None:
    # aiosmtplib sent the messages before this client (its DATA path is the reference): the
    # bytes Postfix stores, which the DKIM signature covers, must not change.
    data = b"".join(parts)
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    assert content(data) == expected


def test_reply_lines_and_paths() -> None:
    assert parse_reply([b"250-mx.test\r\n", b"250-PIPELINING\r\n", b"250 DSN\r\n"]) == Reply(
        250, "mx.test\nPIPELINING\nDSN"
    )
    assert parse_reply([b"550 5.1.1 <a@b>: no  \r\n"]) == Reply(550, "5.1.1 <a@b>: no")
    assert path("a@b.test") == "<a@b.test>"
    for bad in ("a b@c", "a>@c", "a\r\nRSET", "a\x00@c"):
        with pytest.raises(ValueError, match="command line"):
            path(bad)
    assert transaction_commands("r@x", ["a@y", "b@y"], ["BODY=8BITMIME", "SMTPUTF8"]) == [
        "MAIL FROM:<r@x> BODY=8BITMIME SMTPUTF8",
        "RCPT TO:<a@y> NOTIFY=NEVER",
        "RCPT TO:<b@y> NOTIFY=NEVER",
        "DATA",
    ]


OK, GO = Reply(250, "2.1.0 Ok"), Reply(354, "End data with <CR><LF>.<CR><LF>")
BAD, LATER = Reply(550, "5.1.1 no such user"), Reply(450, "4.2.1 try later")
NOBODY = Reply(554, "5.5.1 Error: no valid recipients")


def test_what_the_replies_of_one_group_mean() -> None:
    assert sort_replies(OK, [("a", OK), ("b", BAD)], GO) == Go(
        ("a",), (Refused("b", 550, BAD.text),)
    )
    assert sort_replies(OK, [("b", BAD)], NOBODY) == Injected(
        None, (), (Refused("b", 550, BAD.text),)
    )
    later = sort_replies(OK, [("a", OK), ("c", LATER)], GO)
    assert isinstance(later, TemporaryFailure) and "450 4.2.1 try later" in str(later)
    mail = sort_replies(Reply(553, "5.1.8 bad sender"), [("a", Reply(503, "5.5.1"))], NOBODY)
    assert isinstance(mail, PermanentFailure) and str(mail).startswith("MAIL FROM: 553")
    busy = sort_replies(Reply(452, "4.3.1 full"), [("a", Reply(503, "x"))], NOBODY)
    assert isinstance(busy, TemporaryFailure)
    data = sort_replies(OK, [("a", OK)], Reply(451, "4.3.0 error"))
    assert isinstance(data, TemporaryFailure) and str(data).startswith("DATA: 451")
