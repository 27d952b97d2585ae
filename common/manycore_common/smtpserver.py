"""What the two SMTP services (Receiver, MxServer) share around aiosmtpd: tracking the
messages being recorded so a graceful stop can wait for them, the EHLO keyword for enhanced
status codes, and the listener's lifecycle (listen, health, stop in the right order).

No aiosmtpd import here: the protocol factory is the caller's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis

from . import heaptrim, redisready, tls, workers
from .config import Listen, Prometheus
from .health import HealthServer

log = logging.getLogger(__name__)

#: The reply to a message that completes while the service is stopping (RFC 5321 §3.8): the
#: client keeps it and sends it again, to us or another instance.
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"

#: Said before closing a client whose command line or DATA phase took longer than
#: ``command-timeout-seconds`` (RFC 5321 §3.8: a server that closes on a timeout says 421),
#: so a slow but honest client learns why and retries.
TIMEOUT_REPLY = b"421 4.4.2 Timeout: command or data took too long, closing connection\r\n"

TIMED_OUT = Counter(
    "smtp_timeouts",
    "SMTP connections closed because a command line or the DATA phase took longer than "
    "command-timeout-seconds (slow or stalled clients)",
)


def say_timeout(transport: Any) -> None:
    """Count a timed-out connection and tell the client, right before aiosmtpd closes it.
    aiosmtpd's timer is armed when a command is accepted and is not re-armed by bytes that
    do not complete one, so a client dribbling a line (or DATA) is cut within the timeout."""
    TIMED_OUT.inc()
    if transport is not None and not transport.is_closing():
        transport.write(TIMEOUT_REPLY)


class InFlight:
    """Messages between end-of-data and their reply, so a stop can let them finish."""

    def __init__(self) -> None:
        self.stopping = False
        self.count = 0
        #: Messages tracked so far (what heaptrim watches for the end of a burst).
        self.handled = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        self.count += 1
        self.handled += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self.idle.set()


def with_enhanced_status_codes(responses: list[str]) -> list[str]:
    """EHLO responses plus ENHANCEDSTATUSCODES (RFC 2034): every reply carries one."""
    *head, last = responses
    return [*head, "250-ENHANCEDSTATUSCODES", last]


class EnhancedEhlo:
    """The EHLO hook of both SMTP services' aiosmtpd handlers (Receiver, MxServer).

    aiosmtpd calls ``handle_EHLO`` instead of answering itself once a handler has one; the
    handler must then set ``session.host_name`` itself (aiosmtpd's own EHLO does that).
    """

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return with_enhanced_status_codes(responses)


async def _listen(
    tracked: Callable[[], Any], bind: Listen, handoff: workers.Handoff | None
) -> asyncio.Server | workers.Inbox:
    """The listening socket, or (in a worker) the inbox of connections its parent hands it."""
    if handoff is None:
        loop = asyncio.get_running_loop()
        return await loop.create_server(tracked, bind.inet_interface, bind.inet_port)
    inbox = workers.Inbox(handoff.channel, tracked)
    inbox.start()
    return inbox


async def _close(
    server: asyncio.Server | workers.Inbox,
    sessions: weakref.WeakSet[Any],
    in_flight: InFlight,
    drain_seconds: float,
) -> None:
    """Stop accepting, let the messages being recorded get their answer (at most
    ``drain_seconds``), then close every session."""
    in_flight.stopping = True
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(in_flight.idle.wait(), drain_seconds)
    for protocol in list(sessions):
        if protocol.transport is not None:
            protocol.transport.close()
    await server.wait_closed()


async def serve_smtp(
    factory: Callable[[], Any],
    bind: Listen,
    prometheus: Prometheus,
    redis: Redis,
    in_flight: InFlight,
    stop: asyncio.Event,
    *,
    drain_seconds: float = 20.0,
    log_extra: dict[str, Any] | None = None,
) -> None:
    """Listen until ``stop``; then stop accepting, answer 421 to messages that complete from
    now on, let those being recorded get their answer, close the sessions, and close Redis.

    A worker (see workers) serves the connections its parent hands it and leaves /metrics
    and the probes to the parent."""
    sessions: weakref.WeakSet[Any] = weakref.WeakSet()
    connections = 0

    def tracked() -> Any:
        nonlocal connections
        connections += 1
        protocol = factory()
        sessions.add(protocol)
        return protocol

    handoff = workers.handoff()
    server = await _listen(tracked, bind, handoff)
    log.info(
        "smtp listening",
        extra={"address": bind.inet_interface, "port": bind.inet_port, **(log_extra or {})},
    )

    async def listening() -> bool:
        return server.is_serving()

    health = HealthServer(prometheus, {"redis": redisready.answers(redis), "smtp": listening})
    if handoff is None:
        await health.start()
    # A renewed STARTTLS certificate is served from the next connection on (tls.py).
    reloader = asyncio.create_task(tls.keep_reloaded(stop))
    # What a burst of TLS connections leaves free in the heap goes back once it is over.
    trimmer = asyncio.create_task(
        heaptrim.trim_when_idle(lambda: connections + in_flight.handled, stop)
    )
    try:
        await stop.wait()
    finally:
        await _close(server, sessions, in_flight, drain_seconds)
        await health.stop()
        await redis.aclose()
        for task in (reloader, trimmer):
            task.cancel()
        await asyncio.gather(reloader, trimmer, return_exceptions=True)
