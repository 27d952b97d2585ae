"""The SMTP side of MxServer: never a relay, no AUTH, the null sender welcome, and at our
domains only the addresses we handed out (tagged feedback addresses, postmaster, the abuse
addresses). Every bound a client can hit has its reply and its counter."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax
from redis.exceptions import RedisError

from manycore_common import feedbacktag
from manycore_common.config import MxServerLimits
from manycore_common.feedbacktag import Tag
from manycore_common.smtpreplies import rewrite
from manycore_common.smtpserver import (
    SHUTTING_DOWN,
    EnhancedEhlo,
    InFlight,
    say_timeout,
)

from .authenticate import Analysis
from .classify import Classification
from .dataread import read_data
from .limits import ConnectionLimiter, RateLimiter, Slots, client_key
from .metrics import REFUSED
from .pool import ClassifierPool, Job
from .record import Recorder

log = logging.getLogger(__name__)


__all__ = ["Handler", "MxSMTP", "RateLimiter", "TaggedEnvelope"]

#: RFC 5321 §4.5.3.1.8: "too many recipients" is a temporary failure, 452 (RFC 3463 4.5.3).
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_COMMANDS = "421 4.7.0 Too many commands in one session, closing connection"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
#: RFC 3463 4.3.2 "system not accepting network messages": a temporary refusal for load.
BUSY_CONNECTIONS = "421 4.3.2 Too many connections, try again later"
BUSY_MESSAGES = "451 4.3.2 Too many messages at once, try again later"
RATE_LIMITED = "450 4.7.1 Too many messages from your address, slow down"
#: Said to every address at our domains that we did not hand out, so a forger learns nothing
#: from a 250 (RFC 3463 5.1.1: bad destination mailbox address).
BAD_TAG = "550 5.1.1 No such user: this address does not accept mail"


ROLE_MAILBOXES = frozenset({"postmaster", "abuse"})


class TaggedEnvelope(Envelope):
    """aiosmtpd's envelope plus the feedback tags verified at RCPT, for the DATA step."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[Tag] = []
        #: Octets of the message as received; ``original_content`` keeps the first part.
        self.data_size = 0


def reverse_path(mail_from: str | None) -> str:
    """The envelope sender as the classifier reads it: "" for the null reverse-path (RFC 5321
    §4.5.5; every DSN and most auto-replies come with it), which aiosmtpd hands over as "<>".
    Passing "<>" on made every text bounce without other signs of one unclassified."""
    value = (mail_from or "").strip()
    return "" if value == "<>" else value


def _peer_ip(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


@dataclass(frozen=True)
class Recipients:
    """Who MxServer receives for."""

    keys: tuple[bytes, ...]
    domains: frozenset[str]
    abuse_addresses: frozenset[str]

    def check(self, address: str) -> tuple[str, Tag | None]:
        """("ok", its tag or None), or ("relay" | "bad-tag", None) for a refusal."""
        local, _, domain = address.rpartition("@")
        if address.lower() in self.abuse_addresses:
            return ("ok", None)
        if domain.lower().rstrip(".") not in self.domains:
            return ("relay", None)
        # RFC 5321 §4.5.1: every domain that takes mail takes postmaster@ (any case); RFC 2142
        # §2: abuse@ is where reports of misuse go (feedback loops are registered with it).
        # What arrives there is believed only as far as a tag it quotes proves.
        if local.lower() in ROLE_MAILBOXES:
            return ("ok", None)
        tag = feedbacktag.read_local_part(self.keys, local)
        return ("ok", tag) if tag is not None else ("bad-tag", None)


class MxSMTP(SMTP):
    """aiosmtpd's SMTP with replies that carry RFC 3463 enhanced codes, longer lines, and
    limits on commands per session and connections per client address."""

    def __init__(
        self, handler: Handler, limits: MxServerLimits, keep_bytes: int = 0, **kwargs: Any
    ) -> None:
        # aiosmtpd sizes its stream reader with this; command lines stay at 512 octets (its
        # command_size_limit) and DATA lines up to this (dataread).
        self.line_length_limit = limits.max_line_length
        super().__init__(handler, **kwargs)
        self._size_limit = int(kwargs.get("data_size_limit") or 0)
        self._keep_bytes = keep_bytes
        self._handler = handler
        self._connections = handler.connections
        self._commands_left = limits.max_commands_per_session
        self._smtp_methods = {
            name: self._counted(method) for name, method in self._smtp_methods.items()
        }

    def _counted(self, method: Callable[[Any], Awaitable[None]]) -> Any:
        @functools.wraps(method)  # HELP reads the docstrings
        async def counted(arg: Any) -> None:
            self._commands_left -= 1
            if self._commands_left < 0:
                # Pipelined commands already read still come here until the connection is
                # gone: the first one is answered and counted, the rest are dropped.
                if self._commands_left == -1:
                    REFUSED.labels("too-many-commands").inc()
                    await self.push(TOO_MANY_COMMANDS)
                if self.transport is not None:
                    self.transport.close()
                return
            await method(arg)

        return counted

    def _create_envelope(self) -> Envelope:
        return TaggedEnvelope()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the message read in large pieces (see dataread)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        assert self.session is not None
        refusal = self._handler.admit(self.session)
        if refusal is not None:
            # Before 354: a refused message costs us no octet of its content.
            await self.push(refusal)
            return
        try:
            await self._data_admitted()
        finally:
            self._handler.messages.release()

    async def _data_admitted(self) -> None:
        assert self.envelope is not None
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            result = await read_data(
                self._reader, self.data_size_limit or 0, self.line_length_limit, self._keep_bytes
            )
        except asyncio.CancelledError:
            self._writer.close()  # the connection is gone: nothing more to say
            raise
        if result is None:
            return
        if result.refused is not None:
            # aiosmtpd's own texts, so push() gives them their codes and counters.
            await self.push(
                "500 Line too long (see RFC5321 4.5.3.1.6)"
                if result.refused == "too-long"
                else "552 Error: Too much mail data"
            )
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = result.content
        if isinstance(self.envelope, TaggedEnvelope):
            self.envelope.data_size = result.size
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _handle_client(self) -> None:
        assert self.session is not None
        client = client_key(_peer_ip(self.session))
        refused = self._connections.acquire(client)
        if refused is not None:
            REFUSED.labels("busy" if refused == "total" else "too-many-connections").inc()
            await self.push(BUSY_CONNECTIONS if refused == "total" else TOO_MANY_CONNECTIONS)
            if self.transport is not None:
                self.transport.close()
            return
        try:
            await super()._handle_client()
        finally:
            self._connections.release(client)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status, refused = rewrite(status, self._size_limit)
            if refused == "line-too-long":
                status = (
                    f"500 5.5.2 Line too long: at most {self.line_length_limit} octets per line"
                )
            if refused:
                REFUSED.labels(refused).inc()
        await super().push(status)

    def _timeout_cb(self) -> None:
        say_timeout(self.transport)
        super()._timeout_cb()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated


class Handler(EnhancedEhlo):
    def __init__(
        self,
        recipients: Recipients,
        limits: MxServerLimits,
        recorder: Recorder,
        limiter: RateLimiter,
        pool: ClassifierPool,
    ) -> None:
        self.recipients = recipients
        self.limits = limits
        self.recorder = recorder
        self.limiter = limiter
        self.pool = pool
        self.connections = ConnectionLimiter(limits.max_connections_per_ip, limits.max_connections)
        self.messages = Slots(limits.max_messages_in_flight)
        self.in_flight = InFlight()

    def admit(self, session: Session) -> str | None:
        """At the DATA command, before 354: None and a message slot taken (the caller
        releases it), or the reply that refuses the message. Checked before anything is read,
        so neither a client over its rate nor a crowd of clients costs us their octets. The
        slot comes first: a message refused busy was not taken, so it must not use up the
        client's allowance (it will retry, RFC 5321 §4.5.4.1, and be counted then)."""
        if self.in_flight.stopping:
            return SHUTTING_DOWN
        if not self.messages.take():
            REFUSED.labels("busy").inc()
            return BUSY_MESSAGES
        if not self.limiter.allow(client_key(_peer_ip(session))):
            self.messages.release()
            REFUSED.labels("rate-limit").inc()
            return RATE_LIMITED
        return None

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.limits.max_recipients:
            REFUSED.labels("too-many-recipients").inc()
            return TOO_MANY_RECIPIENTS
        verdict, tag = self.recipients.check(address)
        if verdict == "relay":
            REFUSED.labels("relay").inc()
            # RFC 5321 §3.6.2: a server that is not a relay refuses other destinations.
            return "550 5.7.1 Relaying denied: we only receive mail for our own domains"
        if verdict == "bad-tag":
            REFUSED.labels("bad-tag").inc()
            return BAD_TAG
        if tag is not None and isinstance(envelope, TaggedEnvelope):
            envelope.tags.append(tag)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.in_flight.stopping:
            return SHUTTING_DOWN
        async with self.in_flight.track():
            return await self._record(envelope, _peer_ip(session))

    async def _record(self, envelope: Envelope, client: str) -> str:
        data = envelope.original_content or b""
        tags = tuple(envelope.tags) if isinstance(envelope, TaggedEnvelope) else ()
        mail_from = reverse_path(envelope.mail_from)
        rcpts = tuple(envelope.rcpt_tos)
        result = await self.pool.analyse(Job(mail_from, rcpts, tags, data))
        if isinstance(result, str):  # timed out or crashed: kept for an operator
            result = Analysis(Classification("unclassified", note=f"classification {result}"), ())
        # A tag verified at RCPT, else one the message quotes (a reply to postmaster@ about
        # one of our messages): either proves the message concerns mail we sent.
        uuid = tags[0].uuid if tags else result.tag_uuid
        try:
            size = envelope.data_size if isinstance(envelope, TaggedEnvelope) else len(data)
            envelope_fields = {"mail_from": mail_from, "rcpts": list(rcpts), "bytes": size}
            kind = await self.recorder.record(
                result, data, envelope_fields, uuid, client_key(client)
            )
        except (RedisError, OSError) as exc:
            REFUSED.labels("redis-unavailable").inc()
            log.warning("cannot record message", extra={"error": str(exc)})
            return "451 4.3.0 Temporary storage problem, try again later"
        log.info(
            "message received",
            extra={
                "kind": kind,
                "uuid": uuid,
                "events": len(result.findings),
                "rules": list(result.classification.rules),
                "client": client,
            },
        )
        return f"250 2.0.0 Accepted ({kind})"
