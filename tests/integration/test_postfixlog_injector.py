"""The injector's pipelined SMTP (RFC 2920) against the real private Postfix, configured as
PostfixLog configures it (bench.postfix renders the same main.cf), plus a HOLD on every
client so that what it accepts stays in its queue for the test to read; and against a small
listener that answers nothing until it holds the whole command group (proof of pipelining)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.postfix import PostfixAlone
from manycore_postfixlog.injector import (
    Injected,
    Injector,
    NotSent,
    PermanentFailure,
    Refused,
    TemporaryFailure,
)
from tests.helpers import LOOPBACK, free_port, require_binary, write_configs

RCPT_ACCESS = (
    "inline:{ { later@x.test = 450 4.2.1 Try later }, { bad@x.test = 550 5.1.1 No such user } }"
)
MESSAGE = (
    b"From: a@example.com\r\nTo: ok@x.test\r\nSubject: pipelined\r\n\r\n"
    b"first line\r\n.a line with a leading period\r\n..two\r\n.\r\nlast\r\n"
)


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixAlone]:
    require_binary("postfix")
    root = Path(tempfile.mkdtemp(prefix="manycore-injector-"))
    root.chmod(0o755)  # Postfix's unprivileged processes must reach its queue
    configs = write_configs(root / "configs", free_port())
    main_cf = {
        "smtpd_client_restrictions": "check_client_access static:HOLD",
        "smtpd_recipient_restrictions": f"check_recipient_access {RCPT_ACCESS}, permit",
        "smtpd_timeout": "2s",
    }
    with PostfixAlone(root, *configs, main_cf=main_cf, name="test-injector") as alone:
        yield alone


def held(postfix: PostfixAlone) -> int:
    return postfix.instance.queue_counts().get("hold", 0)


def injector(postfix: PostfixAlone) -> Injector:
    return Injector(LOOPBACK, postfix.port, "injector.test", timeout=10)


def test_accepted_and_refused_recipients_in_one_pipelined_group(postfix: PostfixAlone) -> None:
    async def main() -> None:
        inj = injector(postfix)
        before = held(postfix)
        result = await inj.send(
            "ret@example.com", ["ok1@x.test", "bad@x.test", "ok2@x.test"], MESSAGE
        )
        assert result.queue_id is not None
        assert result.accepted == ("ok1@x.test", "ok2@x.test")
        assert result.refused == (
            Refused(
                "bad@x.test", 550, "5.1.1 <bad@x.test>: Recipient address rejected: No such user"
            ),
        )
        assert held(postfix) == before + 1
        stored = await postfix.instance.content(result.queue_id)
        # Period-stuffed on the wire, stored as given (postcat prints LF line ends).
        assert stored.replace(b"\n", b"\r\n").endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])
        envelope = await postfix.instance.envelope(result.queue_id)
        assert "ok1@x.test" in envelope and "bad@x.test" not in envelope
        await inj.close()

    asyncio.run(main())


def test_every_recipient_refused_queues_nothing_and_the_session_goes_on(
    postfix: PostfixAlone,
) -> None:
    async def main() -> None:
        inj = injector(postfix)
        before = held(postfix)
        result = await inj.send("ret@example.com", ["bad@x.test"], MESSAGE)
        assert (result.queue_id, result.accepted) == (None, ())
        assert [r.code for r in result.refused] == [550]
        conn = inj._conn
        again = await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)
        assert again.queue_id is not None and inj._conn is conn  # same session, after RSET
        assert held(postfix) == before + 1
        await inj.close()

    asyncio.run(main())


def test_a_temporary_refusal_abandons_the_transaction_after_354(postfix: PostfixAlone) -> None:
    """One recipient 4xx, another accepted: DATA is answered 354 already (pipelined), so
    the injector closes the connection: Postfix stores nothing, the item is tried later."""

    async def main() -> None:
        inj = injector(postfix)
        before = held(postfix)
        with pytest.raises(TemporaryFailure, match=r"450 4\.2\.1 .*Try later"):
            await inj.send("ret@example.com", ["ok@x.test", "later@x.test"], MESSAGE)
        await asyncio.sleep(0.5)
        assert held(postfix) == before
        result = await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)
        assert result.queue_id is not None
        await inj.close()

    asyncio.run(main())


def test_the_guard_refusing_sends_nothing(postfix: PostfixAlone) -> None:
    async def main() -> None:
        inj = injector(postfix)
        before = held(postfix)
        with pytest.raises(NotSent):
            await inj.send("ret@example.com", ["ok@x.test"], MESSAGE, guard=lambda: False)
        assert held(postfix) == before
        await inj.close()

    asyncio.run(main())


def test_a_connection_postfix_closed_while_idle_is_replaced(postfix: PostfixAlone) -> None:
    async def main() -> None:
        inj = injector(postfix)
        first = await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)
        conn = inj._conn
        await asyncio.sleep(3.5)  # smtpd_timeout = 2s: Postfix says 421 and closes
        second = await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)
        assert first.queue_id and second.queue_id and first.queue_id != second.queue_id
        assert inj._conn is not conn
        await inj.close()

    asyncio.run(main())


def test_an_address_that_cannot_be_sent_is_refused_for_good(postfix: PostfixAlone) -> None:
    async def main() -> None:
        inj = injector(postfix)
        with pytest.raises(PermanentFailure, match="command line"):
            await inj.send("ret@example.com", ["a>b@x.test\r\nRSET"], MESSAGE)
        await inj.close()

    asyncio.run(main())


# ----------------------------------------------------------------- proof of pipelining


@contextlib.asynccontextmanager
async def strict_pipeliner(group: int) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server that answers nothing of a transaction until it holds all ``group`` commands
    (MAIL, the RCPTs, DATA): a client waiting for each reply would time out."""
    received: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 strict ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-strict\r\n250-PIPELINING\r\n250 DSN\r\n")
        lines = [await reader.readline() for _ in range(group)]
        received.extend(lines)
        writer.write(b"250 2.1.0 Ok\r\n" + b"250 2.1.5 Ok\r\n" * (group - 2) + b"354 go\r\n")
        while (line := await reader.readline()) != b".\r\n":
            received.append(line)
        writer.write(b"250 2.0.0 Ok: queued as 4ABCdef\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(session, LOOPBACK, 0)
    async with server:
        yield server.sockets[0].getsockname()[1], received


def test_mail_rcpt_and_data_go_out_before_any_reply() -> None:
    async def main() -> None:
        async with strict_pipeliner(4) as (port, received):
            inj = Injector(LOOPBACK, port, "injector.test", timeout=3)
            started = time.monotonic()
            result = await inj.send(
                "r@example.com", ["a@x.test", "b@x.test"], b"Subject: x\r\n\r\n.hi\r\n"
            )
            assert time.monotonic() - started < 2
            assert result.queue_id == "4ABCdef"
            assert received == [
                b"MAIL FROM:<r@example.com>\r\n",
                b"RCPT TO:<a@x.test> NOTIFY=NEVER\r\n",
                b"RCPT TO:<b@x.test> NOTIFY=NEVER\r\n",
                b"DATA\r\n",
                b"Subject: x\r\n",
                b"\r\n",
                b"..hi\r\n",
            ]
            inj._abort()

    asyncio.run(main())


# ----------------------------------------------------------------- one recipient: BDAT LAST


def test_one_recipient_goes_as_one_chunk_and_is_stored_as_given(postfix: PostfixAlone) -> None:
    async def main() -> None:
        inj = injector(postfix)
        before = held(postfix)
        result = await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)
        assert inj._conn is not None and inj._conn.supports("CHUNKING")
        assert result.queue_id is not None and result.accepted == ("ok@x.test",)
        assert held(postfix) == before + 1
        stored = await postfix.instance.content(result.queue_id)
        # Not period-stuffed in a chunk (RFC 3030), stored as given all the same.
        assert stored.replace(b"\n", b"\r\n").endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])
        await inj.close()

    asyncio.run(main())


def test_a_temporary_refusal_of_the_one_recipient_stores_nothing(postfix: PostfixAlone) -> None:
    async def main() -> None:
        inj = injector(postfix)
        before = held(postfix)
        with pytest.raises(TemporaryFailure, match=r"450 4\.2\.1 .*Try later"):
            await inj.send("ret@example.com", ["later@x.test"], MESSAGE)
        conn = inj._conn
        assert held(postfix) == before
        result = await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)
        assert result.queue_id is not None and inj._conn is conn  # the chunk was skipped
        assert held(postfix) == before + 1
        await inj.close()

    asyncio.run(main())


@contextlib.asynccontextmanager
async def strict_chunker() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server offering CHUNKING that answers nothing until it holds MAIL, RCPT, the BDAT
    line and the whole chunk: a client waiting for any reply in between would time out."""
    received: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 strict ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-strict\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 DSN\r\n")
        received.extend([await reader.readline() for _ in range(3)])
        received.append(await reader.readexactly(int(received[-1].split()[1])))
        writer.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 4XYZchk\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(session, LOOPBACK, 0)
    async with server:
        yield server.sockets[0].getsockname()[1], received


def test_mail_rcpt_bdat_and_the_chunk_go_out_before_any_reply() -> None:
    async def main() -> None:
        async with strict_chunker() as (port, received):
            inj = Injector(LOOPBACK, port, "injector.test", timeout=3)
            started = time.monotonic()
            result = await inj.send("r@example.com", ["a@x.test"], b"Subject: x\r\n\r\n.hi\n")
            assert time.monotonic() - started < 2
            assert (result.queue_id, result.accepted) == ("4XYZchk", ("a@x.test",))
            assert received == [
                b"MAIL FROM:<r@example.com>\r\n",
                b"RCPT TO:<a@x.test> NOTIFY=NEVER\r\n",
                b"BDAT 19 LAST\r\n",
                b"Subject: x\r\n\r\n.hi\r\n",  # CRLF line ends, no period-stuffing
            ]
            inj._abort()

    asyncio.run(main())


def test_a_batch_in_one_write_settles_each_message_on_its_own(postfix: PostfixAlone) -> None:
    """Accepted, refused for good, refused for now, accepted: each its own transaction in
    the one write; only the accepted ones are queued, and the session goes on."""

    async def main() -> None:
        inj = injector(postfix)
        assert await inj.chunking()
        before = held(postfix)
        rcpts = ["ok1@x.test", "bad@x.test", "later@x.test", "ok2@x.test"]
        outcomes = await inj.send_many(
            [("ret@example.com", r, MESSAGE) for r in rcpts], guard=lambda: True
        )
        first, refused, later, last = outcomes
        assert isinstance(first, Injected) and first.accepted == ("ok1@x.test",)
        assert isinstance(last, Injected) and last.queue_id not in (None, first.queue_id)
        assert isinstance(refused, Injected) and refused.queue_id is None
        assert [r.code for r in refused.refused] == [550]
        assert isinstance(later, TemporaryFailure)
        assert held(postfix) == before + 2
        conn = inj._conn
        again = await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)
        assert again.queue_id is not None and inj._conn is conn
        await inj.close()

    asyncio.run(main())


def test_a_batch_on_a_connection_postfix_closed_is_left_to_send(postfix: PostfixAlone) -> None:
    async def main() -> None:
        inj = injector(postfix)
        assert await inj.chunking()
        await asyncio.sleep(3.5)  # smtpd_timeout = 2s: Postfix says 421 and closes
        before = held(postfix)
        messages = [("ret@example.com", "ok@x.test", MESSAGE)] * 2
        assert await inj.send_many(messages, guard=lambda: True) == [None, None]
        assert held(postfix) == before
        assert (await inj.send("ret@example.com", ["ok@x.test"], MESSAGE)).queue_id
        with pytest.raises(NotSent):
            await inj.send_many(messages, guard=lambda: False)
        assert held(postfix) == before + 1
        await inj.close()

    asyncio.run(main())


def test_a_big_chunk_on_a_connection_postfix_closed_goes_out_on_a_new_one(
    postfix: PostfixAlone,
) -> None:
    """Postfix's idle timeout closed the kept connection. A chunk larger than the socket
    buffer cannot be written whole: the write fails (EPIPE) before any reply is read. Postfix
    read none of it, so it is sent again on a new connection, as a small one is when the
    read finds the connection closed; not a temporary failure and a back-off."""

    async def main() -> None:
        inj = injector(postfix)
        assert await inj.chunking()
        await asyncio.sleep(3.5)  # smtpd_timeout = 2s: Postfix says 421 and closes
        before = held(postfix)
        big = MESSAGE + (b"y" * 998 + b"\r\n") * 2000  # 2 MB
        result = await inj.send("ret@example.com", ["ok@x.test"], big)
        assert result.queue_id is not None and result.accepted == ("ok@x.test",)
        assert held(postfix) == before + 1
        await inj.close()

    asyncio.run(main())
