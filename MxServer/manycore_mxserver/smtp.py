"""The SMTP side of MxServer: never a relay, no AUTH, the null sender welcome."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import Counter
from redis.exceptions import RedisError

from manycore_common.smtpreplies import rewrite
from manycore_common.smtpserver import (
    SHUTTING_DOWN,
    InFlight,
    say_timeout,
    with_enhanced_status_codes,
)

from .classify import Envelope as MailEnvelope
from .classify import Settings, classify
from .record import Recorder

log = logging.getLogger(__name__)

REFUSED = Counter(
    "mxserver_refused",
    "SMTP commands or messages refused, by reason (relay, rate-limit, too-large, "
    "redis-unavailable)",
    ["reason"],
)
for _reason in ("relay", "rate-limit", "too-large", "line-too-long", "redis-unavailable"):
    REFUSED.labels(_reason)


class RateLimiter:
    """Messages per client address in a sliding window, for a bounded number of addresses."""

    def __init__(self, messages: int, window: float, max_clients: int = 50_000) -> None:
        self.messages = messages
        self.window = window
        self.max_clients = max_clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        stamps = self._seen.pop(client, None) or deque()
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        allowed = len(stamps) < self.messages
        if allowed:
            stamps.append(now)
        self._seen[client] = stamps
        while len(self._seen) > self.max_clients:
            self._seen.popitem(last=False)
        return allowed


def _peer_ip(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class MxSMTP(SMTP):
    """aiosmtpd's SMTP with replies that carry RFC 3463 enhanced codes."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._size_limit = int(kwargs.get("data_size_limit") or 0)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status, refused = rewrite(status, self._size_limit)
            if refused:
                REFUSED.labels(refused).inc()
        await super().push(status)

    def _timeout_cb(self) -> None:
        say_timeout(self.transport)
        super()._timeout_cb()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated


class Handler:
    def __init__(
        self,
        domains: frozenset[str],
        settings: Settings,
        recorder: Recorder,
        limiter: RateLimiter,
    ) -> None:
        self.domains = domains
        self.settings = settings
        self.recorder = recorder
        self.limiter = limiter
        self.in_flight = InFlight()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return with_enhanced_status_codes(responses)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain not in self.domains and address.lower() not in self.settings.abuse_addresses:
            REFUSED.labels("relay").inc()
            # RFC 5321 §3.6.2: a server that is not a relay refuses other destinations.
            return "550 5.7.1 Relaying denied: we only receive mail for our own domains"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.in_flight.stopping:
            return SHUTTING_DOWN
        client = _peer_ip(session)
        if not self.limiter.allow(client):
            REFUSED.labels("rate-limit").inc()
            return "450 4.7.1 Too many messages from your address, slow down"
        async with self.in_flight.track():
            return await self._record(envelope, client)

    async def _record(self, envelope: Envelope, client: str) -> str:
        data = envelope.original_content or b""
        mail = MailEnvelope(mail_from=envelope.mail_from or "", rcpts=tuple(envelope.rcpt_tos))
        result = classify(mail, data, self.settings)
        try:
            kind = await self.recorder.record(
                result, data, {"mail_from": mail.mail_from, "rcpts": list(mail.rcpts)}
            )
        except (RedisError, OSError) as exc:
            REFUSED.labels("redis-unavailable").inc()
            log.warning("cannot record message", extra={"error": str(exc)})
            return "451 4.3.0 Temporary storage problem, try again later"
        log.info(
            "message received",
            extra={
                "kind": kind,
                "uuid": result.uuid,
                "rules": list(result.rules),
                "client": client,
            },
        )
        return f"250 2.0.0 Accepted ({kind})"
