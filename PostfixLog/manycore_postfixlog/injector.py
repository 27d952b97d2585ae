"""Hands one message to our Postfix over SMTP on loopback (one transaction, every recipient;
MAIL FROM, the RCPT TOs and DATA pipelined, RFC 2920).

A message for one recipient (what the Transformer makes) goes out in a single write when
Postfix offers CHUNKING (RFC 3030) and PIPELINING: MAIL FROM, RCPT TO and ``BDAT <size> LAST``
followed by the whole message, the three replies read back in order; one round trip and one
wake-up instead of two (issue 20: CPU per message). RFC 3030 §2: a server offering
PIPELINING reads and discards a chunk whose BDAT fails, so a refused recipient leaves the
session in step, and nothing is stored unless BDAT LAST is answered 250. With several
recipients the DATA path stays: a 4xx to one of them must leave nothing queued (below),
which a chunk sent ahead cannot promise. ``send_many`` writes several such messages at once,
each its own transaction (``feedbatch``: a backlog's batch).

Each recipient is given with ``NOTIFY=NEVER`` (RFC 3461 §4.1): Postfix then never mails a
bounce of its own; the customer learns of failures from our events. The DATA reply
``250 2.0.0 Ok: queued as <id>`` names the queue id that Postfix's log lines will carry.

Replies are sorted by what they mean for the queue item:

* a 5xx to RCPT TO: that recipient is refused for good (an event says so); the others go on;
* any 4xx, or a broken connection: nothing was queued (the transaction is reset, or, when
  DATA was already answered 354, abandoned by closing the connection), try later;
* a 5xx to MAIL FROM or DATA: the message itself is refused (it goes to the dead letters).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from .headers import mail_options
from .smtpclient import Connection, Reply, SmtpClosed, content, last_chunk, path

log = logging.getLogger(__name__)

#: Postfix's cleanup(8)/smtpd(8) wording: "250 2.0.0 Ok: queued as 4jbsRc32PYzJM8y".
_QUEUED_AS = re.compile(r"\bqueued as ([0-9A-Za-z]+)\b")


def queued_as(reply: str) -> str | None:
    match = _QUEUED_AS.search(reply)
    return match.group(1) if match else None


class TemporaryFailure(Exception):
    """Nothing was queued; the same item can be tried again later."""


class PermanentFailure(Exception):
    """Postfix refuses the message itself; trying again will not help."""


class NotSent(Exception):
    """The caller's guard said no just before DATA: nothing was queued (the transaction was
    reset)."""


@dataclass(frozen=True)
class Refused:
    rcpt: str
    code: int
    reply: str


@dataclass(frozen=True)
class Injected:
    #: None when Postfix refused every recipient (nothing was queued).
    queue_id: str | None
    accepted: tuple[str, ...]
    refused: tuple[Refused, ...]


class Injector:
    """One SMTP connection to our Postfix, kept open between messages. MAIL FROM, every
    RCPT TO and DATA go out in one write when Postfix offers PIPELINING (RFC 2920), so a
    message costs two round trips instead of 3 + recipients."""

    def __init__(self, host: str, port: int, helo: str, timeout: float = 120.0) -> None:
        self.host = host
        self.port = port
        self.helo = helo
        self.timeout = timeout
        self._conn: Connection | None = None

    async def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = await Connection.open(self.host, self.port, self.helo, self.timeout)
        except (OSError, SmtpClosed, TimeoutError) as exc:
            raise TemporaryFailure(f"cannot connect to postfix: {exc}") from None
        if not conn.supports("DSN"):
            conn.abort()
            # Without DSN (RFC 3461) NOTIFY=NEVER is refused and Postfix would mail bounces.
            raise PermanentFailure("postfix does not offer DSN (smtpd_discard_ehlo_keywords?)")
        self._conn = conn
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.quit()

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    async def send(
        self,
        sender: str,
        rcpts: list[str],
        data: bytes,
        guard: Callable[[], bool] = lambda: True,
    ) -> Injected:
        """``guard`` is asked right before the commands that end with DATA (or BDAT LAST and
        the content) are written: only after the final "." (or the whole LAST chunk) may
        Postfix have the message. False there raises NotSent, nothing having been sent."""
        # A connection Postfix closed while idle (smtpd_timeout) fails at MAIL FROM: open a
        # new one and try once more. Never after the content went out and MAIL FROM was
        # answered: Postfix may have it. (A chunk written to a closed connection, answered by
        # nothing or by the 421 of the idle timeout, was almost always never read. The
        # exception: an smtpd that dies after its cleanup committed the queue file but before
        # its held-back replies went out also answers nothing; the message is then sent
        # twice, as with DATA when its final reply is lost. PostfixLog/README.md says so.)
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                return await self._transaction(conn, sender, rcpts, data, guard)
            except _Stale:
                self._abort()
                if attempt == 2:
                    raise TemporaryFailure("postfix keeps closing the connection") from None
            except (OSError, SmtpClosed, TimeoutError) as exc:
                self._abort()
                raise TemporaryFailure(f"smtp error: {exc!r}") from None
        raise AssertionError("unreachable")

    async def _transaction(
        self,
        conn: Connection,
        sender: str,
        rcpts: list[str],
        data: bytes,
        guard: Callable[[], bool],
    ) -> Injected:
        options = mail_options(sender, rcpts, data)
        try:
            commands = transaction_commands(sender, rcpts, options)
        except ValueError as exc:
            raise PermanentFailure(str(exc)) from None
        if not guard():
            raise NotSent("the guard refused before DATA")
        if len(rcpts) == 1 and conn.supports("CHUNKING") and conn.supports("PIPELINING"):
            return await self._chunked(conn, rcpts[0], commands[:-1], data)
        replies = await _exchange(conn, commands)
        mail, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
        if mail.code == 421 or mail.code == -1:
            raise _Stale  # Postfix's idle timeout ("421 4.4.2 … timeout exceeded")
        outcome = sort_replies(mail, list(zip(rcpts, rcpt_replies, strict=True)), data_reply)
        if data_reply.code == 354 and not isinstance(outcome, Go):
            # Nothing may be sent after 354 but the content: closing now abandons the
            # transaction (RFC 5321 §4.1.1.4: stored only after the final ".").
            self._abort()
        elif not isinstance(outcome, Go):
            await self._reset(conn)
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, Injected):
            return outcome
        conn.write(content(data))
        final = await conn.reply()
        if final.code != 250:
            await self._reset(conn)
            raise _failure("DATA", final.code, final.text)
        queue_id = queued_as(final.text)
        if queue_id is None:
            raise PermanentFailure(f"postfix accepted but named no queue id: {final.text!r}")
        return Injected(queue_id, outcome.accepted, outcome.refused)

    async def _chunked(
        self, conn: Connection, rcpt: str, commands: list[str], data: bytes
    ) -> Injected:
        """MAIL FROM, RCPT TO and the message as one BDAT LAST chunk, in one write (the
        module's docstring); the guard was asked just before, as this write may store it."""
        replies = await _exchange(conn, commands, last_chunk(data))
        mail, rcpt_reply, bdat = replies
        if mail.code == 421 or mail.code == -1:
            raise _Stale
        outcome = sort_chunked(mail, rcpt, rcpt_reply, bdat)
        if not isinstance(outcome, Injected) or outcome.queue_id is None:
            # Nothing was stored: a new transaction starts clean (RFC 3030 §2 asks for no
            # more chunks after a failed one; RSET ends the failed transaction).
            await self._reset(conn)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def chunking(self) -> bool:
        """Whether ``send_many`` can be used: a connection whose Postfix offers CHUNKING and
        PIPELINING (TemporaryFailure or PermanentFailure as ``send`` raises them)."""
        conn = await self._connection()
        return conn.supports("CHUNKING") and conn.supports("PIPELINING")

    async def send_many(
        self, messages: list[tuple[str, str, bytes]], guard: Callable[[], bool]
    ) -> list[Injected | Exception | None]:
        """Several one-recipient messages (sender, recipient, data) in one write, each its
        own transaction (RSET, MAIL FROM, RCPT TO, BDAT LAST; RFC 2920 allows RSET in a
        group), the replies read in order: a backlog costs one round trip per batch, not
        per message. Per message: Injected, the exception ``send`` would raise, or None:
        not sent (an address ``send`` refuses), or its replies did not all arrive (the
        connection broke or was stale); the caller goes on with ``send`` for those, as after
        a TemporaryFailure. ``guard``: as for ``send``."""
        groups = [_chunk_commands(sender, rcpt, data) for sender, rcpt, data in messages]
        conn = await self._connection()
        if not guard():
            raise NotSent("the guard refused before the batch")
        lines: list[bytes] = []
        for (_, _, data), commands in zip(messages, groups, strict=True):
            if commands:
                lines += [b"RSET\r\n", *(c.encode() + b"\r\n" for c in commands), last_chunk(data)]
        replies: list[Reply] = []
        conn.write(b"".join(lines))
        conn.quickack()
        try:
            await conn.replies(len(lines), replies)
        except (OSError, SmtpClosed, TimeoutError):
            self._abort()
        outcomes = batch_outcomes(messages, groups, replies)
        failed = any(not isinstance(o, Injected) or o.queue_id is None for o in outcomes)
        if failed and self._conn is not None:
            await self._reset(conn)  # no transaction left open for the next ``send``
        return outcomes

    async def _reset(self, conn: Connection) -> None:
        try:
            reply = await conn.command("RSET")
        except (OSError, SmtpClosed, TimeoutError):
            self._abort()
            return
        if reply.code != 250:
            self._abort()


@dataclass(frozen=True)
class Go:
    """Every command of the group was accepted so far: send the content."""

    accepted: tuple[str, ...]
    refused: tuple[Refused, ...]


def transaction_commands(sender: str, rcpts: list[str], options: list[str]) -> list[str]:
    """MAIL FROM, one RCPT TO per recipient (NOTIFY=NEVER, RFC 3461 §4.1) and DATA;
    ValueError for an address that cannot go on a command line."""
    mail = " ".join([f"MAIL FROM:{path(sender)}", *options])
    return [mail, *(f"RCPT TO:{path(r)} NOTIFY=NEVER" for r in rcpts), "DATA"]


async def _exchange(conn: Connection, commands: list[str], chunk: bytes = b"") -> list[Reply]:
    """The replies to ``commands`` (and to ``chunk``, a BDAT command with its data, sent
    last: only with PIPELINING), in order: all written at once when the server offers
    PIPELINING (RFC 2920 §3.1), else one at a time. A connection that ends before the first
    reply, or whose first reply is 421 (RFC 5321 §3.8: the server is closing it), gives
    code -1 / 421 there (stale: nothing of this message was taken)."""
    lines = [c.encode("utf-8") + b"\r\n" for c in commands]
    if chunk:
        lines.append(chunk)
    replies: list[Reply] = []
    try:
        if conn.supports("PIPELINING"):
            conn.write(b"".join(lines))
            if chunk:
                conn.quickack()
            await conn.replies(len(lines), replies)
        else:
            for line in lines:
                conn.write(line)
                replies.append(await conn.reply())
    except SmtpClosed:
        if replies and replies[0].code != 421:
            raise
        return [replies[0] if replies else Reply(-1, "closed")] * len(lines)
    return replies


def sort_replies(
    mail: Reply, rcpts: list[tuple[str, Reply]], data: Reply
) -> Go | Injected | Exception:
    """What the replies to one pipelined group mean (the module's docstring): go on with
    the content, nothing queued because every recipient was refused, or a failure."""
    if not mail.ok:
        return _failure("MAIL FROM", mail.code, mail.text)
    accepted: list[str] = []
    refused: list[Refused] = []
    for rcpt, reply in rcpts:
        if reply.ok:
            accepted.append(rcpt)
        elif reply.code >= 500:
            refused.append(Refused(rcpt, reply.code, reply.text))
        else:
            return TemporaryFailure(f"RCPT TO: {reply.code} {reply.text}")
    if not accepted:
        return Injected(None, (), tuple(refused))
    if data.code != 354:
        return _failure("DATA", data.code, data.text)
    return Go(tuple(accepted), tuple(refused))


def sort_chunked(mail: Reply, rcpt: str, rcpt_reply: Reply, bdat: Reply) -> Injected | Exception:
    """What the replies to MAIL FROM, one RCPT TO and BDAT LAST mean: stored only when BDAT
    LAST is answered 250 (RFC 3030 §2); else as ``sort_replies`` says for the commands."""
    if bdat.ok and mail.ok and rcpt_reply.ok:
        queue_id = queued_as(bdat.text)
        if queue_id is None:
            return PermanentFailure(f"postfix accepted but named no queue id: {bdat.text!r}")
        return Injected(queue_id, (rcpt,), ())
    if not mail.ok:
        return _failure("MAIL FROM", mail.code, mail.text)
    if rcpt_reply.code >= 500:
        return Injected(None, (), (Refused(rcpt, rcpt_reply.code, rcpt_reply.text),))
    if not rcpt_reply.ok:
        return TemporaryFailure(f"RCPT TO: {rcpt_reply.code} {rcpt_reply.text}")
    return _failure("BDAT", bdat.code, bdat.text)


def _chunk_commands(sender: str, rcpt: str, data: bytes) -> list[str]:
    """MAIL FROM and RCPT TO of one message; [] for an address that cannot be sent."""
    try:
        return transaction_commands(sender, [rcpt], mail_options(sender, [rcpt], data))[:-1]
    except ValueError:
        return []


def batch_outcomes(
    messages: list[tuple[str, str, bytes]], groups: list[list[str]], replies: list[Reply]
) -> list[Injected | Exception | None]:
    """``send_many``'s answer from the replies that arrived (four per sent message: RSET,
    MAIL FROM, RCPT TO, BDAT); None for a message not sent or not fully answered."""
    outcomes: list[Injected | Exception | None] = []
    at = 0
    for (_, rcpt, _), commands in zip(messages, groups, strict=True):
        if not commands:
            outcomes.append(None)
            continue
        mine, at = replies[at : at + 4], at + 4
        if len(mine) < 4 or mine[1].code in (421, -1):
            outcomes.append(None)
            continue
        outcomes.append(sort_chunked(mine[1], rcpt, mine[2], mine[3]))
    return outcomes


class _Stale(Exception):
    """The connection was closed before anything of this message was sent."""


def _failure(stage: str, code: int, reply: str) -> Exception:
    text = f"{stage}: {code} {reply}"
    if code >= 500:
        return PermanentFailure(text)
    return TemporaryFailure(text)
