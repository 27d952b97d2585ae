"""The benchmarks' lean SMTP client pieces: read one reply, open a session (STARTTLS and
AUTH PLAIN optional). Lean on purpose: the client shares the machine with what it measures,
so it must cost as little as possible per message."""

from __future__ import annotations

import asyncio
import base64
import ssl

from bench.common import LOOPBACK

USER, PASSWORD = "apa", "banan"  # the example config's login


class Refused(RuntimeError):
    """A 4xx answer: the caller may offer the message again (the Receiver's 451 when a
    queue is full)."""


async def reply(reader: asyncio.StreamReader, expected: int) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            break
    code = int(line[:3])
    if code == expected:
        return
    if 400 <= code < 500:
        raise Refused(line.decode(errors="replace").strip())
    raise RuntimeError(f"expected {expected}, got {line!r}")


async def session(
    port: int, context: ssl.SSLContext | None = None, auth: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """EHLO; with ``context`` STARTTLS and EHLO again, then (with ``auth``) AUTH PLAIN."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    await reply(reader, 220)
    writer.write(b"EHLO localhost\r\n")
    await reply(reader, 250)
    if context is None:
        return reader, writer
    writer.write(b"STARTTLS\r\n")
    await reply(reader, 220)
    await writer.start_tls(context, server_hostname="localhost")
    writer.write(b"EHLO localhost\r\n")
    await reply(reader, 250)
    if auth:
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        writer.write(b"AUTH PLAIN " + token + b"\r\n")
        await reply(reader, 235)
    return reader, writer
