"""The Receiver's chunked DATA reader (manycore_receiver.smtpdata) against aiosmtpd's own,
line by line: the same bytes sent to both over real loopback connections, in random pieces,
must give the same replies, the same message content, and leave the stream at the same place
(what follows the data is read as commands by both)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from manycore_receiver.smtp import ReceiverSMTP
from manycore_receiver.smtpdata import line_too_long, unstuff
from tests.helpers import LOOPBACK

SIZE_LIMIT = 300


class Chunked(ReceiverSMTP):
    line_length_limit = 40  # small, so that random lines pass it often


class LineByLine(Chunked):
    smtp_DATA = SMTP.smtp_DATA  # aiosmtpd's reader, everything else the same


class Recorder:
    def __init__(self) -> None:
        self.contents: list[bytes | None] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.contents.append(envelope.original_content)
        return "250 2.0.0 OK"


async def _transcript(cls: type[ReceiverSMTP], payload: bytes, pieces: list[int]) -> Any:
    recorder = Recorder()

    def factory() -> ReceiverSMTP:
        handler: Any = recorder
        return cls(handler, hostname="t", auth_required=False, auth_require_tls=False,
                   data_size_limit=SIZE_LIMIT, decode_data=False, enable_SMTPUTF8=True)  # fmt: skip

    server = await asyncio.get_running_loop().create_server(factory, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
        stream = payload + b"NOOP\r\nQUIT\r\n"
        at = 0
        # A server may close early (aiosmtpd does after too many bad commands): what it
        # answered until then is the transcript.
        with contextlib.suppress(ConnectionError):
            for size in [*pieces, len(stream)]:
                writer.write(stream[at : at + size])
                await writer.drain()
                await asyncio.sleep(0)
                at += size
        replies = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(4096), 10):
                replies += chunk
        writer.close()
    finally:
        server.close()
    return replies, recorder.contents


async def _same(payload: bytes, rng: random.Random) -> None:
    pieces = [rng.randint(1, 9) for _ in range(len(payload) // 5)]
    expected = await _transcript(LineByLine, payload, pieces)
    got = await _transcript(Chunked, payload, pieces)
    assert got == expected, payload
    assert expected[0].startswith(b"220 ") and b"354 " in expected[0]  # not a vacuous match


CASES = [
    b".\r\n",
    b"a\r\n.\r\n",
    b"..\r\n.a\r\n..b\r\nc.\r\n.\r\n",
    b".x first line\r\nend.\r\nend.\r\n\r\n.\r\n",
    b"bare\nlf\n.\nstill\r.\r\nin\r\n.\r\n",
    b"x" * 38 + b"\r\n" + b"y" * 39 + b"\r\n.\r\n",
    b"x" * 39 + b"\r\n.\r\n",  # one over the line limit with its CRLF
    b"z" * 500 + b"\r\n.\r\n",
    b"ok\r\n" * 74 + b"abcd\r\n.\r\n",  # exactly the size limit
    b"ok\r\n" * 75 + b"\r\n.\r\n",  # one over
    b"ok\r\n" * 200 + b"q" * 60 + b"\r\n.\r\n",  # too much, then a long line
    b"q" * 60 + b"\r\n" + b"ok\r\n" * 200 + b".\r\n",  # a long line, then too much
    b"a\r\n.\r\n.\r\nMAIL FROM:<x@y.example>\r\n",  # what follows is commands
]


@pytest.mark.parametrize("payload", CASES)
async def test_the_same_answer_as_aiosmtpd(payload: bytes) -> None:
    await _same(payload, random.Random(payload))


async def test_random_data_gets_the_same_answer_as_aiosmtpd() -> None:
    rng = random.Random(20)
    alphabet = [b".", b".", b"\r\n", b"\r\n", b"\r", b"\n", b"a", b"bb", b"c" * 30]
    accepted = 0
    for _ in range(60):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        # Cut at an end line within: what would follow it is garbage commands, and after
        # enough of them aiosmtpd hangs up before the transcript can be compared.
        cut = (b"\r\n" + body).find(b"\r\n.\r\n")
        body = body if cut < 0 else body[: max(cut - 2, 0)]
        await _same(body + b"\r\n.\r\n", rng)
        accepted += 1
    assert accepted == 60


def test_unstuff_and_line_length() -> None:
    assert unstuff(b".a\r\n..\r\nb.\r\n") == b"a\r\n.\r\nb.\r\n"
    assert unstuff(b"plain\r\n") == b"plain\r\n"
    assert not line_too_long(b"x" * 998 + b"\r\n", 1000)
    assert line_too_long(b"x" * 999 + b"\r\n", 1000)
    assert line_too_long(b"x" * 999, 1000)  # an unfinished last line counts too
