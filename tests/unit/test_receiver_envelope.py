"""The Receiver's reading of MAIL/RCPT paths agrees with aiosmtpd's own parser wherever it
answers (plain ``<local@domain> PARAMS``), and leaves everything else to it."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from manycore_receiver.smtp import plain_path


def aiosmtpd_getaddr(arg: str) -> tuple[str | None, str | None]:
    server = SMTP.__new__(SMTP)  # _getaddr reads only local_part_limit
    server.local_part_limit = 0
    return server._getaddr(arg)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<news@example.com>", ("news@example.com", "")),
        ("<a.b+tag@Mail.Example.COM> SIZE=5120 BODY=8BITMIME",
         ("a.b+tag@Mail.Example.COM", "SIZE=5120 BODY=8BITMIME")),
        ("<a@b>   SMTPUTF8  ", ("a@b", "SMTPUTF8  ")),
        ("<a@b>  ", ("a@b", "")),
    ],
)  # fmt: skip
def test_plain_paths_are_read_here(arg: str, expected: tuple[str, str]) -> None:
    assert plain_path(arg) == expected
    assert aiosmtpd_getaddr(arg) == expected


@pytest.mark.parametrize(
    "arg",
    ["<>", "a@b", ' <a@b>', '<"x y"@b>', "<a@[1.2.3.4]>", "<@relay:a@b>", "<a..b@c>",
     "<.a@b>", "<a@b..c>", "<a@-b>", "<a@b> (comment) SIZE=5", "<a@b>(c)", "<ü@b>",
     "<a@b", "<a @b>", "<a@b>SIZE=5", "<a@b> \t SMTPUTF8", "<a@b> \x0bSIZE=10",
     "<=?utf-8?q?abc?=@example.com>", "<a@b> SIZE=(5)", "<a@b.c> \x0c(c)"],
)  # fmt: skip
def test_everything_else_goes_to_aiosmtpd(arg: str) -> None:
    assert plain_path(arg) is None


PIECES = st.sampled_from(
    ["<", ">", "@", ".", "a", "Z", "0", "-", "+", "_", "'", "!", "~", " ", "\t", '"', "(", ")",
     "[", "]", ":", ",", ";", "\\", "ü", "SIZE=10", "BODY=8BITMIME", "example.com", "x-y",
     "\x0b", "\x0c", "\r", "\n", "\x1c", "\u2028", "\x85", "=?", "?=", "=?utf-8?q?a?="]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES, max_size=14).map("".join))
@example("<a-@b>")
@example("<a@b-c.d-e>")
def test_agrees_with_aiosmtpd_wherever_it_answers(arg: str) -> None:
    plain = plain_path(arg)
    if plain is not None:
        assert aiosmtpd_getaddr(arg) == plain


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_agrees_with_aiosmtpd_on_any_text(arg: str) -> None:
    plain = plain_path(arg)
    if plain is not None:
        assert aiosmtpd_getaddr(arg) == plain
