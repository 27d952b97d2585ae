"""A small SMTP client for the one loopback hop to our own Postfix, with command pipelining.

Why not aiosmtplib: it waits for each reply before the next command, so one message costs
four round trips (MAIL, RCPT, DATA, the content). Postfix's smtpd offers PIPELINING
(RFC 2920), which lets MAIL FROM, every RCPT TO and DATA go out in one write (§3.1: DATA is
the last command of a group) with the replies read back in order: two round trips per
message. With CHUNKING (RFC 3030) as well, the content goes in the same write as a
``BDAT <size> LAST`` chunk: one round trip (``injector``). The client only speaks what that
hop needs: EHLO, MAIL/RCPT/DATA/BDAT/RSET/QUIT, no TLS, no AUTH (loopback only,
docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from dataclasses import dataclass

#: RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; Postfix's are shorter. A larger
#: limit costs nothing and keeps a chatty server from failing the read.
_LINE_LIMIT = 65536
#: Lone CR or LF become CRLF (RFC 5321 §2.3.8), as aiosmtplib did before us, so the bytes
#: Postfix stores (and the DKIM signature covers) stay what they were.
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
#: RFC 5321 §4.5.2: a line that starts with a period gets one more.
_LEADING_PERIOD = re.compile(rb"(?m)^\.")
#: Nothing that could end or split a command line (RFC 5321 §4.1.2 paths never hold these).
_UNSAFE_PATH = re.compile(r"[\x00-\x20\x7f<>]")


class SmtpClosed(Exception):
    """The server closed the connection (or it broke) before a full reply arrived."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    #: The reply's text, its lines joined with "\n" (codes and hyphens removed).
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def path(address: str) -> str:
    """``<address>`` for MAIL FROM / RCPT TO, or ValueError for one that cannot be sent."""
    if _UNSAFE_PATH.search(address):
        raise ValueError(f"address {address!r} cannot be sent on an SMTP command line")
    return f"<{address}>"


def crlf_lines(data: bytes) -> bytes:
    """The message with CRLF line ends and a final CRLF: what Postfix stores either way."""
    crlf = data.count(b"\r\n")
    # The regular expression costs several times what counting does; messages from the
    # Transformer have CRLF line ends only, so it rarely has anything to do.
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_END.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def content(data: bytes) -> bytes:
    """The message as sent after DATA's 354: CRLF line ends, a final CRLF, period-stuffed
    (RFC 5321 §4.5.2), and the ending "." line."""
    data = crlf_lines(data)
    if b"\n." in data or data.startswith(b"."):
        data = _LEADING_PERIOD.sub(b"..", data)
    return data + b".\r\n"


def last_chunk(data: bytes) -> bytes:
    """``BDAT <size> LAST`` and the whole message as one chunk (RFC 3030 §2): counted in
    octets, so neither period-stuffed nor ended by a "." line."""
    data = crlf_lines(data)
    return b"BDAT %d LAST\r\n%b" % (len(data), data)


def parse_reply(lines: list[bytes]) -> Reply:
    """One reply from its lines ("250-first", …, "250 last"; RFC 5321 §4.2.1)."""
    code = int(lines[-1][:3])
    text = "\n".join(line[4:].strip(b" \t\r\n").decode("utf-8", "replace") for line in lines)
    return Reply(code, text)


class Connection:
    """One SMTP session: replies are read in the order the commands were written."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}

    @classmethod
    async def open(cls, host: str, port: int, helo: str, timeout: float) -> Connection:
        """Connected, greeted and EHLO'd; OSError, SmtpClosed or TimeoutError otherwise."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=_LINE_LIMIT), timeout
        )
        conn = cls(reader, writer, timeout)
        try:
            greeting = await conn.reply()
            if greeting.code != 220:
                raise SmtpClosed(f"greeting: {greeting.code} {greeting.text}")
            ehlo = await conn.command(f"EHLO {helo}")
            if ehlo.code != 250:
                raise SmtpClosed(f"EHLO: {ehlo.code} {ehlo.text}")
        except BaseException:
            conn.abort()
            raise
        for line in ehlo.text.split("\n")[1:]:
            keyword, _, params = line.partition(" ")
            conn.extensions[keyword.upper()] = params
        return conn

    @property
    def closed(self) -> bool:
        return self.writer.is_closing() or self.reader.at_eof()

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def quickack(self) -> None:
        """Acknowledge what arrives next at once, not up to 40 ms later (Linux
        ``TCP_QUICKACK``, tcp(7); it does not stay set, hence once per write). Postfix's
        smtpd answers a BDAT chunk larger than its 4 KiB read buffer in two writes: the
        replies to MAIL and RCPT when it refills the buffer, BDAT's 250 once the queue file
        is saved. With our ACK of the first one delayed, Nagle holds back the second until
        that ACK comes: 44 ms per 5 KB message instead of 1 (measured; 3.6 KB: 0.8 ms)."""
        option = getattr(socket, "TCP_QUICKACK", None)
        sock = self.writer.get_extra_info("socket")
        if option is not None and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, 1)

    async def reply(self) -> Reply:
        """The next reply; SmtpClosed when the connection ends first."""
        async with asyncio.timeout(self.timeout):
            await self._drain()
            return await self._next_reply()

    async def replies(self, count: int, into: list[Reply]) -> None:
        """The next ``count`` replies, appended to ``into`` (those that arrived stay there
        when the connection ends first): the replies to a pipelined group (RFC 2920), with
        one drain and one ``timeout`` for the group (a timer each cost more than parsing)."""
        async with asyncio.timeout(self.timeout):
            await self._drain()
            for _ in range(count):
                into.append(await self._next_reply())

    async def _drain(self) -> None:
        """What was written, sent; SmtpClosed when the connection broke first (EPIPE,
        ECONNRESET), as a read would report it. A write larger than the socket buffer to a
        connection Postfix closed while idle fails here, before the 421 waiting to be read:
        the injector must see it as the stale connection it is (sent again on a new one),
        not as an error after the content went out."""
        try:
            await self.writer.drain()
        except OSError as exc:
            raise SmtpClosed(f"connection broken while writing: {exc!r}") from None

    async def _next_reply(self) -> Reply:
        lines: list[bytes] = []
        while True:
            try:
                line = await self.reader.readline()
            except (OSError, ValueError) as exc:  # ValueError: a line over the limit
                raise SmtpClosed(str(exc)) from None
            if not line.endswith(b"\n") or len(line) < 4 or not line[:3].isdigit():
                raise SmtpClosed(f"connection ended or bad reply line {line[:80]!r}")
            lines.append(line)
            if line[3:4] != b"-":
                return parse_reply(lines)

    async def command(self, line: str) -> Reply:
        self.write(line.encode("utf-8") + b"\r\n")
        return await self.reply()

    def abort(self) -> None:
        """Close at once. During DATA this is how a transaction is abandoned: a server
        stores a message only after the final "." (RFC 5321 §4.1.1.4)."""
        self.writer.transport.abort()

    async def quit(self) -> None:
        with contextlib.suppress(SmtpClosed, OSError, TimeoutError):
            await self.command("QUIT")
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.writer.wait_closed()
