"""Redis clients built from a ``reliable-queue.redis`` config section."""

from __future__ import annotations

import ssl

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .config import RedisConnection


def connect(settings: RedisConnection, *, blocking_timeout: float = 0.0) -> Redis:
    """A client for ``settings``. ``blocking_timeout`` is the longest BLMOVE the caller will
    issue; the socket timeout is extended by it so a blocking read is not cut short.

    No automatic retries: redis-py would re-send a command whose reply was lost (a timeout),
    and our commands are not idempotent (a push would be queued twice, a BLMOVE would strand
    the first item). Callers handle errors at their protocol's level instead: 451 / 503 to
    the client, or a consumer's own retry loop."""
    ssl_kwargs: dict[str, object] = {}
    if settings.tls:
        ssl_kwargs = {
            "ssl": True,
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": str(settings.tls_ca_file) if settings.tls_ca_file else None,
        }
    return Redis(
        host=settings.hostname,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_connect_timeout=settings.connect_timeout_seconds,
        socket_timeout=settings.command_timeout_seconds + blocking_timeout,
        retry=Retry(NoBackoff(), retries=0),
        health_check_interval=30,
        client_name=None,
        **ssl_kwargs,  # type: ignore[arg-type]
    )
