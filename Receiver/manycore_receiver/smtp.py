"""The SMTP side of the Receiver: aiosmtpd with our AUTH policy, our replies and our DATA
handler. Protocol work stays in aiosmtpd; this module decides what to answer."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from manycore_common.auth import Credentials
from manycore_common.intake import DROPPED, Intake, TemporarilyUnavailable
from manycore_common.loginthrottle import LoginThrottle, attempt_key
from manycore_common.message import MessageRejected
from manycore_common.smtpreplies import rewrite
from manycore_common.smtpserver import (
    SHUTTING_DOWN,
    EnhancedEhlo,
    InFlight,
    say_timeout,
)

from .metrics import AUTH_FAILURES, DUPLICATES
from .smtpdata import NOMINAL, TOO_LONG, read_data

log = logging.getLogger(__name__)


def _peer_ip(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _locked_reply(seconds: float) -> str:
    return (
        "454 4.7.0 Too many failed authentication attempts, "
        f"try again in {int(seconds) + 1} seconds"
    )


# A Path (RFC 5321 §4.1.2) of the plain kind nearly every client sends: "<local@domain>" with
# a dot-atom local part and a domain of LDH labels, then nothing or parameters (printable
# ASCII without parentheses) each after spaces. aiosmtpd reads text after the ">" as
# comments and folding white space, so anything fancier there is left to it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*)>((?: +[!-'*-~]+)* *)"
)


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of a plain ``<local@domain> PARAMS``, exactly as aiosmtpd's own
    parser answers them; None for anything else (quoted local parts, address literals, source
    routes, comments, no angle brackets, 8-bit, RFC 2047 encoded words, which aiosmtpd's
    parser decodes), which aiosmtpd's parser then reads."""
    match = _PLAIN_PATH.fullmatch(arg)
    if match is None or "=?" in match[1]:
        return None
    return match[1], match[2].lstrip(" ")


class ReceiverSMTP(SMTP):
    """aiosmtpd's SMTP with tarpitted AUTH and replies that carry RFC 3463 enhanced codes."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._size_limit = int(kwargs.get("data_size_limit") or 0)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status, refused = rewrite(status, self._size_limit)
            if refused:
                DROPPED.labels(refused).inc()
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd reads the address of every MAIL and RCPT with the email package's full
        # RFC 5322 parser, and builds a typing.Protocol class on each call: a large share of
        # the Receiver's CPU per message (bench/README.md), for envelope addresses we then ignore
        # (recipients come from To and Cc). The plain form is read here; the rest goes on to
        # aiosmtpd, which answers both the same way (tests/unit/test_receiver_envelope.py).
        plain = None if self.local_part_limit else plain_path(arg)
        if plain is None:
            return super()._getaddr(arg)
        return plain

    def _timeout_cb(self) -> None:
        say_timeout(self.transport)
        super()._timeout_cb()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated

    async def check_auth_needed(self, caller_method: str) -> bool:
        # MAIL, RCPT and DATA without a successful AUTH: refused by aiosmtpd (530 5.7.0);
        # counted so that relay attempts show on a dashboard.
        needed = bool(await super().check_auth_needed(caller_method))
        if needed:
            AUTH_FAILURES.labels("missing").inc()
        return needed

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the text read in chunks (smtpdata), the same checks before
        it and the same replies after it."""
        if self._decode_data:
            await super().smtp_DATA(arg)  # text decoded to str: never configured here
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_data(self._reader, self.data_size_limit or 0, self.line_length_limit)
        except asyncio.CancelledError:
            # The connection was lost during DATA (aiosmtpd cancels this on EOF).
            self._writer.close()
            raise
        if data.state != NOMINAL:
            # aiosmtpd's own texts, which push() rewrites with enhanced codes and counts.
            too_long = data.state == TOO_LONG
            await self.push(
                "500 Line too long (see RFC5321 4.5.3.1.6)"
                if too_long
                else "552 Error: Too much mail data"
            )
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # unannotated there
            return
        self.envelope.content = self.envelope.original_content = data.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    # aiosmtpd finds its mechanisms by these names (auth_<MECHANISM>); both read the
    # credentials, then call our Authenticator. A failure it counted comes back with a Tarpit.
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await _tarpit(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await _tarpit(await super().auth_LOGIN(_, args))


@dataclass(frozen=True)
class Tarpit:
    """How long the answer to a failed AUTH waits. Carried in ``AuthResult.auth_data``,
    which aiosmtpd ignores when ``success`` is False."""

    seconds: float


async def _tarpit(result: AuthResult) -> AuthResult:
    if isinstance(result.auth_data, Tarpit) and result.auth_data.seconds > 0:
        # Each recent failure at that pair doubles the wait (auth-throttle.delay-seconds);
        # the client's next try on this connection can only come after it.
        await asyncio.sleep(result.auth_data.seconds)
    return result


class Authenticator:
    """aiosmtpd authenticator for PLAIN and LOGIN against the configured logins, throttled
    per (client address, login name) and per address for unknown names, as HttpReceiver
    (the rules and the threat model: manycore_common.loginthrottle)."""

    def __init__(self, credentials: Credentials, throttle: LoginThrottle) -> None:
        self.credentials = credentials
        self.throttle = throttle

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        client = _peer_ip(session)
        login = auth_data.login if isinstance(auth_data, LoginPassword) else None
        known = login is not None and self.credentials.knows(login)
        # A configured name is valid UTF-8 (it came from the YAML), so the pair is exact.
        name = login.decode("utf-8", "replace") if login is not None else None
        key = attempt_key(client, name, known, client_is_proxy=False)
        # Checked in the same step as checking the password and recording the result (no
        # await in between): attempts on parallel connections cannot get more than
        # max-failures passwords checked per pair and window.
        locked = self.throttle.locked_for(key)
        if locked > 0:
            AUTH_FAILURES.labels("locked-out").inc()
            return AuthResult(success=False, handled=False, message=_locked_reply(locked))
        # Checked whatever the name, as in Credentials.check: the time taken does not tell
        # which names exist.
        if isinstance(auth_data, LoginPassword) and self.credentials.check(
            auth_data.login, auth_data.password
        ):
            return AuthResult(success=True, auth_data=name)
        hidden = self.throttle.failure(key, client, client_is_proxy=False)
        AUTH_FAILURES.labels("bad-credentials").inc()
        log.warning("authentication failed", extra={"client": client, "mechanism": mechanism})
        # handled=False makes aiosmtpd send "535 5.7.8" (or our message); with the default
        # (True) it would send nothing and the client would hang
        # (docs/ARCHITECTURE.md#checked-facts). From an address locked for unknown names a
        # wrong password is answered 454 too, so the answer does not tell which names exist.
        message = _locked_reply(hidden) if hidden > 0 else None
        tarpit = Tarpit(self.throttle.delay_for(key))
        return AuthResult(success=False, handled=False, message=message, auth_data=tarpit)


class Handler(EnhancedEhlo):
    """DATA: validate, enqueue, and only then answer 250 (docs/ARCHITECTURE.md#acknowledged)."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        #: Once stopping, new messages get 421 instead of being enqueued (their 250 might not
        #: reach the client any more, who would then send them again).
        self.in_flight = InFlight()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.in_flight.stopping:
            return SHUTTING_DOWN
        data = envelope.original_content
        if data is None:
            data = envelope.content if isinstance(envelope.content, bytes) else b""
        async with self.in_flight.track():
            try:
                submitted = await self.intake.accept(data, source="smtp")
            except MessageRejected as exc:
                log.info(
                    "message refused", extra={"reason": exc.reason, "client": _peer_ip(session)}
                )
                return exc.smtp_reply
            except TemporarilyUnavailable as exc:
                return f"451 4.3.0 {exc.text}"
        uuid, queue = submitted.accepted.uuid, submitted.queue.name
        if submitted.duplicate:
            # The same success as the first time (a client that lost our first 250 sends
            # again), with a note saying why nothing new was queued.
            DUPLICATES.inc()
            return f"250 2.0.0 Already queued as {uuid} on {queue} (duplicate X-Uuid)"
        return f"250 2.0.0 Queued as {uuid} on {queue}"
