"""``manycore-receiver``: wires config, Redis, the SMTP listener and the health server."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ssl import SSLContext

from manycore_common import redisconn, tls
from manycore_common.auth import Credentials
from manycore_common.config import Config, ConfigError, ReceiverSection
from manycore_common.intake import Intake
from manycore_common.lifecycle import run_service
from manycore_common.loginthrottle import LoginThrottle
from manycore_common.smtpserver import serve_smtp

from .smtp import Authenticator, Handler, ReceiverSMTP

log = logging.getLogger(__name__)

SERVICE = "receiver"
#: How long a graceful stop waits for messages being enqueued to get their reply.
DRAIN_SECONDS = 20.0


@dataclass(frozen=True)
class Prepared:
    section: ReceiverSection
    hostname: str
    tls_context: SSLContext


def prepare(config: Config) -> Prepared:
    section: ReceiverSection = config.require("receiver")
    # An explicit hostname also keeps aiosmtpd from calling socket.getfqdn() (a DNS lookup).
    hostname = section.hostname or socket.gethostname()
    context, generated = tls.server_context(
        config.path(section.tls.cert_file), config.path(section.tls.key_file), hostname
    )
    if generated and section.workers > 1:
        # Each worker would generate a pair of its own: clients would meet a different
        # certificate on each connection.
        raise ConfigError(
            [
                "receiver.workers: above 1 needs the STARTTLS certificate files "
                f"(receiver.tls.cert-file {section.tls.cert_file}, key-file "
                f"{section.tls.key_file}); without them each worker would make its own"
            ]
        )
    if generated:
        log.warning(
            "no STARTTLS certificate found: using a generated self-signed one",
            extra={"cert_file": str(config.path(section.tls.cert_file))},
        )
    if section.allow_plaintext_auth:
        log.warning("allow-plaintext-auth is on: passwords may cross the network in clear text")
    return Prepared(section, hostname, context)


async def serve(config: Config, prepared: Prepared, stop: asyncio.Event) -> None:
    section = prepared.section
    redis = redisconn.connect(section.reliable_queue.redis)
    intake = Intake.from_config(config, redis, section.max_message_size)
    authenticator = Authenticator(
        Credentials(section.auth_logins), LoginThrottle(section.auth_throttle)
    )
    handler = Handler(intake)
    plaintext = section.allow_plaintext_auth

    def factory() -> ReceiverSMTP:
        return ReceiverSMTP(
            handler,
            hostname=prepared.hostname,
            ident="Manycore-Mail Receiver",
            tls_context=prepared.tls_context,
            require_starttls=not plaintext,
            auth_required=True,
            auth_require_tls=not plaintext,
            authenticator=authenticator,
            data_size_limit=section.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=section.command_timeout_seconds,
        )

    await serve_smtp(
        factory,
        section.bind,
        section.prometheus,
        redis,
        handler.in_flight,
        stop,
        drain_seconds=DRAIN_SECONDS,
    )


def _section(prepared: Prepared) -> ReceiverSection:
    return prepared.section


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve, front_door=_section)
