"""PostfixLog's header edits on raw bytes (X-ReturnPathIb out and back, its own Received
line), the MAIL FROM options, and reading Postfix's "queued as"."""

from __future__ import annotations

from manycore_postfixlog import headers
from manycore_postfixlog.injector import queued_as

SIGNED = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n\tb=abc\r\n"
    b"X-ReturnPathIb: bounce-u1@bounces.example.com\r\n"
    b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
)


def test_return_path_is_taken_out_and_nothing_else_changes() -> None:
    sender, data = headers.take_return_path(SIGNED)
    assert sender == "bounce-u1@bounces.example.com"
    assert data == SIGNED.replace(b"X-ReturnPathIb: bounce-u1@bounces.example.com\r\n", b"")
    assert headers.add_return_path(data, sender) == SIGNED


def test_return_path_only_in_the_header_section() -> None:
    data = b"From: a@x\r\n\r\nX-ReturnPathIb: not-a-header@x\r\n"
    assert headers.take_return_path(data) == (None, data)


def test_own_received_line_is_dropped_only_when_it_names_the_queue_id() -> None:
    stored = (
        b"Received: from localhost (localhost [127.0.0.1])\n"
        b"\tby mx.example.com (Postfix) with ESMTP id 4jbsS65ZY9zJLxR;\n"
        b"\tSat, 28 Nov 2026 01:01:42 +0000 (UTC)\n"
        b"Received: from elsewhere by other id 4jbsS65ZY9zJLxR\n"
        b"From: a@x\n\nbody\n"
    )
    out = headers.drop_own_received(stored, "4jbsS65ZY9zJLxR")
    assert out.startswith(b"Received: from elsewhere")
    assert headers.drop_own_received(stored, "OTHERID1234") == stored
    assert headers.to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"


def test_mail_options() -> None:
    assert headers.mail_options("a@x", ["b@y"], b"From: a@x\r\n\r\nhi\r\n") == []
    assert headers.mail_options("a@x", ["b@y"], "From: a@x\r\n\r\nhé\r\n".encode()) == [
        "BODY=8BITMIME"
    ]
    assert headers.mail_options("a@x", ["bé@y"], b"From: a@x\r\n\r\nhi\r\n") == ["SMTPUTF8"]


def test_queued_as() -> None:
    assert queued_as("2.0.0 Ok: queued as 4jbsRc32PYzJM8y") == "4jbsRc32PYzJM8y"
    assert queued_as("2.0.0 Ok") is None
