"""Reading the DATA phase (RFC 5321 §4.1.1.4) in large pieces instead of line by line.

aiosmtpd reads message data one line per Python-level step, so a 10 MB message of 3-octet
lines costs millions of steps on the event loop. Here the stream reader searches for the
end-of-data sequence CRLF "." CRLF in C, over whatever is buffered, and the checks (size,
longest line, dot-unstuffing, RFC 5321 §4.5.2) are done on whole pieces: the work per message
is a few steps per 64 KiB, whatever its lines look like.

Same contract as aiosmtpd's: lines end with CRLF, a line over the length limit or a message
over the size limit is read to its end and then refused. Only the first ``keep_bytes`` are
kept in memory (the rest is checked and counted, then dropped): nothing after them is read
by the classifier or stored, and 50 connections sending 10 MB each would otherwise hold
500 MB of one replica.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

END = b"\r\n.\r\n"


@dataclass(frozen=True)
class DataResult:
    """The message (dots unstuffed, the final CRLF kept), or why it is refused."""

    content: bytes
    refused: Literal["too-long", "too-much"] | None = None
    #: Octets of the whole message as received (``content`` may be its first part only).
    size: int = field(default=0, compare=False)


def longest_line_over(data: bytes, limit: int) -> bool:
    """Whether ``data`` holds a run of more than ``limit`` octets without a line feed. The
    window jumps to the last line feed inside it, so the steps are about
    2 * len(data) / limit, however short the lines are."""
    start = 0
    while len(data) - start > limit:
        newline = data.rfind(b"\n", start, start + limit + 1)
        if newline == -1:
            return True
        start = newline + 1
    return False


class _Checker:
    """Size and line length over successive pieces of one message."""

    def __init__(self, size_limit: int, line_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.size = 0
        self.tail = b""  # the unfinished last line of the pieces so far
        self.refused: Literal["too-long", "too-much"] | None = None

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.refused is None and self.size_limit and self.size > self.size_limit:
            self.refused = "too-much"
        if self.refused is not None:
            return
        # A line is limited with its CRLF; lines end at LF here, so a bare LF counts too.
        joined = self.tail + piece
        if longest_line_over(joined, self.line_limit):
            self.refused = "too-long"
            return
        self.tail = joined[joined.rfind(b"\n") + 1 :]


async def read_data(
    reader: asyncio.StreamReader, size_limit: int, line_limit: int, keep_bytes: int = 0
) -> DataResult | None:
    """The message after a 354 (its first ``keep_bytes`` octets, or all with 0), or None
    when the client went away before the end."""
    # The line "." ends the data even as its first line: search behind a CRLF that stands for
    # the end of the DATA command line. (asyncio has no unread; aiosmtpd, too, reaches into
    # this buffer for STARTTLS.)
    reader._buffer[0:0] = b"\r\n"  # type: ignore[attr-defined]
    checker = _Checker(size_limit, line_limit)
    pieces: list[bytes] = []
    room = keep_bytes or -1  # octets still kept; -1: no limit
    first = True
    while True:
        try:
            piece = await reader.readuntil(END)
            done = True
        except asyncio.LimitOverrunError as exc:
            piece = await reader.read(exc.consumed)
            done = False
        except asyncio.IncompleteReadError:
            return None
        if first:
            piece, first = piece[2:], False
        if done:
            piece = piece[:-3]  # the "." CRLF; the CRLF before it ends the last line
        checker.add(piece)
        if checker.refused is not None:
            pieces.clear()
        elif room < 0:
            pieces.append(piece)
        elif room > 0:
            pieces.append(piece[:room])
            room -= len(pieces[-1])
        if done:
            break
    if checker.refused is not None:
        return DataResult(b"", checker.refused, checker.size)
    # RFC 5321 §4.5.2: the sender doubled every dot that starts a line.
    content = b"".join(pieces)
    unstuffed = (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:]
    return DataResult(unstuffed, None, checker.size)
