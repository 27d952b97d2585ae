"""``manycore-mxserver``: wires config, Redis, the SMTP listener and the health server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from ssl import SSLContext

from manycore_common import redisconn, tls
from manycore_common.config import Config, ConfigError, MxServerSection
from manycore_common.health import HealthServer
from manycore_common.lifecycle import run_service
from manycore_common.queue import ReliableQueue

from .classify import Settings
from .record import Recorder
from .smtp import Handler, MxSMTP, RateLimiter

log = logging.getLogger(__name__)

SERVICE = "mxserver"
UNCLASSIFIED_KEY = "MXSERVER-UNCLASSIFIED"
DRAIN_SECONDS = 20.0


@dataclass(frozen=True)
class Prepared:
    section: MxServerSection
    hostname: str
    tls_context: SSLContext
    domains: frozenset[str]
    settings: Settings


def prepare(config: Config) -> Prepared:
    section: MxServerSection = config.require("mxserver")
    domains = {d.strip().lower() for d in section.extra_domains}
    if config.customer.transformer is not None:
        domains |= {d.return_path_domain for d in config.customer.transformer.domain_settings}
    if not domains:
        raise ConfigError(
            [
                "mxserver: no domain to receive for (transformer.domain-settings or "
                "mxserver.extra-domains)"
            ]
        )
    own = set()
    if config.customer.postfixlog is not None:
        name = config.customer.postfixlog.string_replacer.main_cf.get("myhostname")
        if name:
            own.add(str(name).lower())
    hostname = section.hostname or socket.gethostname()
    context, generated = tls.server_context(
        config.path(section.tls.cert_file), config.path(section.tls.key_file), hostname
    )
    if generated:
        log.warning("no STARTTLS certificate found: using a generated self-signed one")
    settings = Settings(own_mtas=frozenset(own), abuse_addresses=section.abuse.all())
    return Prepared(section, hostname, context, frozenset(domains), settings)


async def serve(config: Config, prepared: object, stop: asyncio.Event) -> None:
    assert isinstance(prepared, Prepared)
    section = prepared.section
    redis = redisconn.connect(section.reliable_queue.redis)
    recorder = Recorder(
        redis,
        ReliableQueue(redis, config.global_.backdata.queue_name),
        UNCLASSIFIED_KEY,
        section.unclassified.max_count,
        section.unclassified.max_bytes,
    )
    handler = Handler(
        prepared.domains,
        prepared.settings,
        recorder,
        RateLimiter(section.rate_limit.messages, section.rate_limit.window_seconds),
    )
    sessions: weakref.WeakSet[MxSMTP] = weakref.WeakSet()

    def factory() -> MxSMTP:
        protocol = MxSMTP(
            handler,
            hostname=prepared.hostname,
            ident="Manycore-Mail MxServer",
            tls_context=prepared.tls_context,
            require_starttls=False,  # RFC 3207: STARTTLS is offered to, not forced on, MTAs
            auth_required=False,
            data_size_limit=section.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=300,
        )
        sessions.add(protocol)
        return protocol

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, section.bind.inet_interface, section.bind.inet_port)
    log.info(
        "smtp listening",
        extra={
            "address": section.bind.inet_interface,
            "port": section.bind.inet_port,
            "domains": sorted(prepared.domains),
        },
    )

    async def redis_ok() -> bool:
        return bool(await redis.ping())

    async def listening() -> bool:
        return server.is_serving()

    health = HealthServer(section.prometheus, {"redis": redis_ok, "smtp": listening})
    await health.start()
    try:
        await stop.wait()
    finally:
        # Stop accepting, answer 421 to messages that complete from now on, let those being
        # recorded get their answer, then close: an MTA whose DATA got no 250 retries.
        handler.stopping = True
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(handler.idle.wait(), DRAIN_SECONDS)
        for protocol in list(sessions):
            if protocol.transport is not None:
                protocol.transport.close()
        await server.wait_closed()
        await health.stop()
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve)
