"""Primary, replica or sentinel: which one this pod is at start, and the configuration lines
each role adds to what ``server.render_config`` writes.

At start a data node asks the sentinels (``redis.reliable-queue.redis`` in the Sentinel
form) which node is the primary now. Whatever its configured role, a node the sentinels do
not name replicates the one they name, so a former primary that comes back after a
failover joins as a replica instead of splitting the set in two. When the sentinels name no
one (first start of the whole set, or no Sentinel form), the configured role holds. Only a
node that starts as primary with the sentinels naming no one may restore a backup (see
``service``): every other node gets its data from the primary.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common.config import NodeAddress, RedisConnection, RedisServer
from manycore_common.redisconn import NO_CLIENT_SETINFO

from .acl import acl_password

log = logging.getLogger(__name__)

#: The ACL user replicas authenticate as (its password is ``redis.server.password``).
REPLICATION_USER = "replication"
#: The ACL user sentinels use on data nodes: the commands the Redis documentation lists for
#: Sentinel ("Redis Sentinel and ACL"), nothing else.
SENTINEL_USER = "sentinel"
_SENTINEL_COMMANDS = (
    "+multi +slaveof +replicaof +ping +exec +subscribe +config|rewrite +role +publish +info "
    "+client|setname +client|kill +script|kill"
)


@dataclass(frozen=True)
class Start:
    """What this data node starts as: ``replicaof`` None means primary."""

    replicaof: NodeAddress | None
    sentinels_named: bool

    @property
    def may_restore(self) -> bool:
        return self.replicaof is None and not self.sentinels_named


def announce_name(settings: RedisServer) -> str | None:
    """``announce-hostname`` with ``{hostname}`` replaced by this host's name, so that the
    pods of one StatefulSet share a config: ``{hostname}.redis-headless`` is redis-1's
    ``redis-1.redis-headless``."""
    if settings.announce_hostname is None:
        return None
    return settings.announce_hostname.replace("{hostname}", socket.gethostname())


def decide(settings: RedisServer, named: NodeAddress | None) -> Start:
    """``named``: the primary the sentinels name now (None: they name no one). With no one
    named, a node is primary if its role says so or it is the configured first primary
    (the StatefulSet's pod 0: every pod has role replica and the same ``primary``)."""
    me = NodeAddress(hostname=announce_name(settings) or "-", port=settings.port)
    if named is not None:
        return Start(None if named == me else named, True)
    if settings.role == "primary" or settings.primary == me:
        return Start(None, False)
    return Start(settings.primary, False)


async def ask_sentinels(connection: RedisConnection, master_name: str) -> NodeAddress | None:
    """The primary any reachable sentinel names; None when none names one or none answers."""
    password = connection.sentinel_password
    for sentinel in connection.sentinels:
        client = Redis(
            host=sentinel.hostname,
            port=sentinel.port,
            username=connection.sentinel_username,
            password=password.get_secret_value() if password else None,
            socket_connect_timeout=connection.connect_timeout_seconds,
            socket_timeout=connection.connect_timeout_seconds,
            **NO_CLIENT_SETINFO,  # the sentinel user may not run it: redisconn says why
        )
        try:
            answer = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "sentinel did not answer", extra={"sentinel": sentinel.hostname, "error": str(exc)}
            )
            continue
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        if answer:
            host, port = answer
            return NodeAddress(hostname=_text(host), port=int(port))
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def data_node_lines(settings: RedisServer, start: Start) -> list[str]:
    """Users for replication and sentinels, announce name, replicaof, the write guard."""
    assert settings.password is not None
    digest = acl_password(settings.password.get_secret_value())
    lines = [
        f"user {REPLICATION_USER} on {digest} +psync +replconf +ping",
        f"user {SENTINEL_USER} on {digest} allchannels {_SENTINEL_COMMANDS}",
        f"masteruser {REPLICATION_USER}",
        f"masterauth {_quoted(settings.password.get_secret_value())}",
        f"min-replicas-to-write {settings.min_replicas_to_write}",
        "min-replicas-max-lag 10",
    ]
    if announced := announce_name(settings):
        lines.append(f"replica-announce-ip {announced}")
    if start.replicaof is not None:
        lines.append(f"replicaof {start.replicaof.hostname} {start.replicaof.port}")
    return lines


def sentinel_config(settings: RedisServer, primary: NodeAddress) -> str:
    """redis-sentinel's configuration (it rewrites the file with what it learns)."""
    assert settings.password is not None
    name = settings.master_name
    lines = [
        f"port {settings.port}",
        f"bind {settings.bind}",
        f"dir {settings.data_dir}",
        "daemonize no",
        'logfile ""',
        # Kubernetes pods are reached by name; their addresses change at every restart.
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
        f"sentinel monitor {name} {primary.hostname} {primary.port} {settings.quorum}",
        f"sentinel auth-user {name} {SENTINEL_USER}",
        f"sentinel auth-pass {name} {_quoted(settings.password.get_secret_value())}",
        f"sentinel down-after-milliseconds {name} {settings.down_after_milliseconds}",
        f"sentinel failover-timeout {name} {settings.failover_timeout_milliseconds}",
        f"sentinel parallel-syncs {name} 1",
    ]
    if announced := announce_name(settings):
        lines.append(f"sentinel announce-ip {announced}")
    if settings.sentinel_password is not None:
        secret = _quoted(settings.sentinel_password.get_secret_value())
        lines += [f"requirepass {secret}", f"sentinel sentinel-pass {secret}"]
    return "\n".join([*lines, ""])


def _quoted(value: str) -> str:
    """A config-file string: Redis reads double-quoted strings with backslash escapes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
