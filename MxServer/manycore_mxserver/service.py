"""``manycore-mxserver``: wires config, Redis, the SMTP listener and the health server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from redis.asyncio import Redis

from manycore_common import redisconn, tls
from manycore_common.config import Config, ConfigError, MxServerSection
from manycore_common.lifecycle import run_service
from manycore_common.queue import ReliableQueue
from manycore_common.smtpserver import serve_smtp

from .authenticate import Scope
from .classify import Settings
from .limits import RateLimiter
from .pool import ClassifierPool
from .record import Recorder
from .senders import Senders
from .smtp import Handler, MxSMTP, Recipients

log = logging.getLogger(__name__)

SERVICE = "mxserver"
DRAIN_SECONDS = 20.0


@dataclass(frozen=True)
class Prepared:
    section: MxServerSection
    hostname: str
    tls_context: SSLContext
    domains: frozenset[str]
    settings: Settings
    keys: tuple[bytes, ...]
    senders: Senders


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
    settings = classifier_settings(
        Settings(own_mtas=frozenset(own), abuse_addresses=section.abuse.all()), section
    )
    # Without the keys no feedback address can be verified: refuse to start (ConfigError).
    keys = config.customer.common_config.feedback_keys(SERVICE)
    transformer = config.customer.transformer
    senders = Senders.from_pairs(
        (d.domain, d.return_path_domain)
        for d in (transformer.domain_settings if transformer else ())
    )
    return Prepared(section, hostname, context, frozenset(domains), settings, keys, senders)


def classifier_settings(settings: Settings, section: MxServerSection) -> Settings:
    """The classifier's own bounds from ``mxserver.limits``, where it has them. It may read
    one failure more than the limit, so that a longer report is known to be cut."""
    bounds: dict[str, Any] = {
        "scan_bytes": section.limits.scan_bytes,
        "max_failures": section.limits.max_failures_per_report + 1,
    }
    known = {f.name for f in dataclasses.fields(Settings)}
    return dataclasses.replace(settings, **{k: v for k, v in bounds.items() if k in known})


def _recorder(config: Config, prepared: Prepared, redis: Redis) -> Recorder:
    return Recorder(
        redis,
        ReliableQueue(redis, config.global_.backdata.queue_name),
        prepared.section.unclassified,
        prepared.senders,
        config.customer.common_config.suppression,
    )


async def serve(config: Config, prepared: Prepared, stop: asyncio.Event) -> None:
    section = prepared.section
    redis = redisconn.connect(section.reliable_queue.redis)
    recorder = _recorder(config, prepared, redis)
    limits = section.limits
    scope = Scope(
        prepared.keys, prepared.domains, limits.scan_bytes, limits.max_failures_per_report
    )
    classifier = section.classifier
    pool = ClassifierPool(
        classifier.workers,
        classifier.timeout_seconds,
        prepared.settings,
        scope,
        classifier.max_memory_mb * 1024 * 1024,
    )
    await pool.start()
    handler = Handler(
        Recipients(prepared.keys, prepared.domains, prepared.settings.abuse_addresses),
        limits,
        recorder,
        RateLimiter(section.rate_limit.messages, section.rate_limit.window_seconds),
        pool,
    )

    def factory() -> MxSMTP:
        return MxSMTP(
            handler,
            limits,
            # What the classifier, the tag search and the unclassified list can read; one
            # octet more tells that a message was cut.
            max(limits.scan_bytes, section.unclassified.max_bytes) + 1,
            hostname=prepared.hostname,
            ident="Manycore-Mail MxServer",
            tls_context=prepared.tls_context,
            require_starttls=False,  # RFC 3207: STARTTLS is offered to, not forced on, MTAs
            auth_required=False,
            data_size_limit=section.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=section.command_timeout_seconds,
        )

    try:
        await serve_smtp(
            factory,
            section.bind,
            section.prometheus,
            redis,
            handler.in_flight,
            stop,
            drain_seconds=DRAIN_SECONDS,
            log_extra={"domains": sorted(prepared.domains)},
        )
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve)
