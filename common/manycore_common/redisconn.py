"""Redis clients built from a ``reliable-queue.redis`` config section.

Two forms. One node: a plain client. Sentinel (``sentinels`` + ``master-name``): a client
whose every new connection asks the sentinels where the primary is (redis-py's
``SentinelConnectionPool``). A failover is followed without retries of our own: the dead
primary's connections fail (connection refused, reset, or the command timeout), the command
fails like any Redis error (451 / 503 to clients, a consumer's own retry loop), idle
connections to the old address are dropped when the sentinels name a new one, and a demoted
primary's READONLY reply drops the connection too. Until the sentinels agree on the new
primary (their down-after-milliseconds plus an election, ~1-15 s), writes fail that way.
"""

from __future__ import annotations

import ssl
from typing import Any

from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from .config import RedisConnection
from .replicas import Client, ReplicaAck

#: Nothing but AUTH (HELLO) and our own commands at connect. redis-py sends ``CLIENT
#: SETINFO`` (LIB-NAME, LIB-VER) and, over RESP3, ``CLIENT MAINT_NOTIFICATIONS`` by default:
#: with one ACL user per service (manycore_redis.acl) Redis refuses them (>= 7.2 logs every
#: connect in ``ACL LOG``; 7.0, Debian 12's, does not know them and refuses a rule naming
#: them, so they cannot be granted). ``driver_info=None`` is redis-py's way to send no
#: SETINFO (it replaces the deprecated ``lib_name``/``lib_version``); maintenance
#: notifications are for Redis Cloud / Enterprise endpoints, which we do not use. Every
#: client we build passes these (tests/integration/test_redis_setinfo.py).
NO_CLIENT_SETINFO: dict[str, Any] = {
    "driver_info": None,
    "maint_notifications_config": MaintNotificationsConfig(enabled=False),
}


def connect(settings: RedisConnection, *, blocking_timeout: float = 0.0) -> Client:
    """A client for ``settings``. ``blocking_timeout`` is the longest BLMOVE the caller will
    issue; the socket timeout is extended by it so a blocking read is not cut short.

    No automatic retries: redis-py would re-send a command whose reply was lost (a timeout),
    and our commands are not idempotent (a push would be queued twice, a BLMOVE would strand
    the first item). Callers handle errors at their protocol's level instead: 451 / 503 to
    the client, or a consumer's own retry loop."""
    kwargs = _connection_kwargs(settings, blocking_timeout)
    client: Client
    if settings.sentinels:
        assert settings.master_name is not None  # the config's validator pairs them
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [(s.hostname, s.port) for s in settings.sentinels],
            sentinel_kwargs=_sentinel_kwargs(settings),
            **kwargs,
        )
        client = sentinel.master_for(settings.master_name, redis_class=Client)
    else:
        client = Client(host=settings.hostname, port=settings.port, **kwargs)
    if settings.replicas_to_ack > 0:
        client.replica_ack = ReplicaAck(settings.replicas_to_ack, settings.replica_ack_timeout_ms)
    return client


def _tls_kwargs(settings: RedisConnection) -> dict[str, Any]:
    if not settings.tls:
        return {}
    return {
        "ssl": True,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(settings.tls_ca_file) if settings.tls_ca_file else None,
    }


def _connection_kwargs(settings: RedisConnection, blocking_timeout: float) -> dict[str, Any]:
    wait_seconds = settings.replica_ack_timeout_ms / 1000 if settings.replicas_to_ack else 0.0
    return {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password.get_secret_value() if settings.password else None,
        "socket_connect_timeout": settings.connect_timeout_seconds,
        # A WAIT blocks up to its timeout: the socket must wait that long for the reply.
        "socket_timeout": settings.command_timeout_seconds + blocking_timeout + wait_seconds,
        "retry": Retry(NoBackoff(), retries=0),
        "health_check_interval": 30,
        "client_name": None,
        **NO_CLIENT_SETINFO,
        **_tls_kwargs(settings),
    }


def _sentinel_kwargs(settings: RedisConnection) -> dict[str, Any]:
    """Sentinels answer at once: short timeouts, so a dead sentinel costs little before
    redis-py asks the next one."""
    password = settings.sentinel_password
    return {
        "username": settings.sentinel_username,
        "password": password.get_secret_value() if password else None,
        "socket_connect_timeout": settings.connect_timeout_seconds,
        "socket_timeout": settings.connect_timeout_seconds,
        "retry": Retry(NoBackoff(), retries=0),
        **NO_CLIENT_SETINFO,
        **_tls_kwargs(settings),
    }
