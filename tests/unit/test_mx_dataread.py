"""MxServer's DATA reader on a real asyncio.StreamReader (what aiosmtpd gives it): the end of
data, dot-unstuffing (RFC 5321 §4.5.2), the limits, whatever the pieces the bytes arrive in;
and it agrees with a line-by-line reference reading."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from manycore_mxserver.dataread import DataResult, longest_line_over, read_data

LIMIT = 2048


async def _read(
    chunks: list[bytes], size_limit: int, eof: bool, keep: int = 0
) -> tuple[DataResult | None, bytes]:
    reader = asyncio.StreamReader(limit=LIMIT)
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    result = await read_data(reader, size_limit, LIMIT, keep)
    if eof:
        return result, b""
    reader.feed_eof()  # what is left is what the command loop would read next
    return result, await reader.read()


def read(
    chunks: list[bytes], size_limit: int = 0, eof: bool = False, keep: int = 0
) -> tuple[DataResult | None, bytes]:
    return asyncio.run(_read(chunks, size_limit, eof, keep))


def reference(wire: bytes) -> bytes:
    """Line by line, as RFC 5321 §4.5.2 describes it."""
    out = []
    for line in wire.split(b"\r\n"):
        if line == b".":
            break
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(x + b"\r\n" for x in out)


def test_end_of_data_and_unstuffing() -> None:
    assert read([b".\r\n"]) == (DataResult(b""), b"")
    assert read([b"a\r\n.\r\nQUIT\r\n"]) == (DataResult(b"a\r\n"), b"QUIT\r\n")
    assert read([b"..x\r\n", b"a.\r\n..\r\n", b".\r\n"])[0] == DataResult(b".x\r\na.\r\n.\r\n")
    # The end sequence split over many small pieces.
    assert read([b"a\r", b"\n", b".", b"\r", b"\n"])[0] == DataResult(b"a\r\n")


def test_limits() -> None:
    long_line = b"x" * (LIMIT + 1) + b"\r\n"
    assert read([long_line + b".\r\n"])[0] == DataResult(b"", "too-long")
    assert read([b"x" * (LIMIT - 2) + b"\r\n.\r\n"])[0] == DataResult(b"x" * (LIMIT - 2) + b"\r\n")
    # Over the size limit: read to the end, then refused; what follows is left for commands.
    assert read([b"y\r\n" * 5000 + b".\r\nNOOP\r\n"], size_limit=1000) == (
        DataResult(b"", "too-much"),
        b"NOOP\r\n",
    )
    assert read([b"a\r\nb"], eof=True)[0] is None  # the client went away


def test_longest_line_is_found_in_few_steps() -> None:
    assert longest_line_over(b"a\n" * 10 + b"b" * 100, 99)
    assert not longest_line_over((b"c" * 99 + b"\n") * 1000, 99)
    assert longest_line_over((b"c" * 99 + b"\n") * 1000 + b"d" * 100 + b"\n", 99)


LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@settings(max_examples=300)
@given(lines=st.lists(LINE, max_size=30), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_agrees_with_a_line_by_line_reading(lines: list[bytes], cuts: list[int]) -> None:
    # What a client sends: every line starting with a dot gets one more (RFC 5321 §4.5.2).
    body = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    wire = body + b".\r\nRSET\r\n"
    bounds = sorted(min(c, len(wire)) for c in cuts)
    chunks = [wire[a:b] for a, b in zip([0, *bounds], [*bounds, len(wire)], strict=True)]
    result, rest = read([c for c in chunks if c])
    assert result is not None and result.content == reference(wire), wire
    assert rest == b"RSET\r\n"


def test_only_the_first_keep_bytes_are_kept_but_all_are_checked() -> None:
    body = b"".join(b"line %06d of the message\r\n" % i for i in range(40_000))  # ~1 MB
    wire = b"Subject: big\r\n\r\n" + body + b".\r\nQUIT\r\n"
    chunks = [wire[i : i + 4096] for i in range(0, len(wire), 4096)]
    result, rest = read(chunks, keep=10_000)
    assert result is not None and result.refused is None
    assert len(result.content) == 10_000 and result.size == len(wire) - len(b".\r\nQUIT\r\n")
    assert result.content == (b"Subject: big\r\n\r\n" + body)[:10_000]
    assert rest == b"QUIT\r\n"
    # The limits still see the whole message.
    result, _ = read(chunks, size_limit=100_000, keep=10_000)
    assert result is not None and result.refused == "too-much"
