"""Hands one message to our Postfix over SMTP on loopback (one transaction, every recipient).

Each recipient is given with ``NOTIFY=NEVER`` (RFC 3461 §4.1): Postfix then never mails a
bounce of its own; the customer learns of failures from our events. The DATA reply
``250 2.0.0 Ok: queued as <id>`` names the queue id that Postfix's log lines will carry.

Replies are sorted by what they mean for the queue item:

* a 5xx to RCPT TO: that recipient is refused for good (an event says so); the others go on;
* any 4xx, or a broken connection: nothing was queued (the transaction is reset), try later;
* a 5xx to MAIL FROM or DATA: the message itself is refused (it goes to the dead letters).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPResponseException, SMTPServerDisconnected

from .headers import mail_options

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
    """One SMTP connection to our Postfix, kept open between messages."""

    def __init__(self, host: str, port: int, helo: str, timeout: float = 120.0) -> None:
        self.host = host
        self.port = port
        self.helo = helo
        self.timeout = timeout
        self._smtp: aiosmtplib.SMTP | None = None

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.helo,
            timeout=self.timeout,
            start_tls=False,
        )
        try:
            await smtp.connect()
            await smtp.ehlo()
        except (OSError, aiosmtplib.SMTPException) as exc:
            raise TemporaryFailure(f"cannot connect to postfix: {exc}") from None
        if not smtp.supports_extension("dsn"):
            smtp.close()
            # Without DSN (RFC 3461) NOTIFY=NEVER is refused and Postfix would mail bounces.
            raise PermanentFailure("postfix does not offer DSN (smtpd_discard_ehlo_keywords?)")
        self._smtp = smtp
        return smtp

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()
            smtp.close()

    async def send(
        self,
        sender: str,
        rcpts: list[str],
        data: bytes,
        guard: Callable[[], bool] = lambda: True,
    ) -> Injected:
        """``guard`` is asked right before DATA, the step after which Postfix may have the
        message: False there resets the transaction and raises NotSent."""
        # A connection Postfix closed while idle (smtpd_timeout) fails at MAIL FROM: open a
        # new one and try once more. Never after DATA went out: Postfix may have queued it.
        for attempt in (1, 2):
            smtp = await self._connection()
            try:
                return await self._transaction(smtp, sender, rcpts, data, guard)
            except _Stale:
                await self.close()
                if attempt == 2:
                    raise TemporaryFailure("postfix keeps closing the connection") from None
        raise AssertionError("unreachable")

    async def _transaction(
        self,
        smtp: aiosmtplib.SMTP,
        sender: str,
        rcpts: list[str],
        data: bytes,
        guard: Callable[[], bool],
    ) -> Injected:
        options = mail_options(sender, rcpts, data)
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
        except SMTPServerDisconnected:
            raise _Stale from None
        except SMTPResponseException as exc:
            await self._reset(smtp)
            raise _failure("MAIL FROM", exc) from None
        accepted: list[str] = []
        refused: list[Refused] = []
        try:
            for rcpt in rcpts:
                try:
                    await smtp.rcpt(rcpt, options=["NOTIFY=NEVER"], encoding=encoding)
                    accepted.append(rcpt)
                except SMTPResponseException as exc:
                    if exc.code < 500:
                        raise
                    refused.append(Refused(rcpt, exc.code, exc.message))
            if not accepted:
                await self._reset(smtp)
                return Injected(None, (), tuple(refused))
            if not guard():
                await self._reset(smtp)
                raise NotSent("the guard refused before DATA")
            reply = await smtp.data(data)
        except SMTPServerDisconnected as exc:
            await self.close()
            raise TemporaryFailure(f"postfix closed the connection: {exc}") from None
        except SMTPResponseException as exc:
            await self._reset(smtp)
            raise _failure("RCPT TO/DATA", exc) from None
        except (OSError, aiosmtplib.SMTPException) as exc:
            await self.close()
            raise TemporaryFailure(f"smtp error: {exc}") from None
        queue_id = queued_as(reply.message)
        if queue_id is None:
            raise PermanentFailure(f"postfix accepted but named no queue id: {reply.message!r}")
        return Injected(queue_id, tuple(accepted), tuple(refused))

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset()
        except (OSError, aiosmtplib.SMTPException):
            await self.close()


class _Stale(Exception):
    """The connection was closed before anything of this message was sent."""


def _failure(stage: str, exc: SMTPResponseException) -> Exception:
    text = f"{stage}: {exc.code} {exc.message}"
    if exc.code >= 500:
        return PermanentFailure(text)
    return TemporaryFailure(text)
