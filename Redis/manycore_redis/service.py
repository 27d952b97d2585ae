"""``manycore-redis``: the Redis pod's process.

With a ``redis.server`` section it runs redis-server itself: restores the newest backup from
object storage into an empty data directory, starts redis-server with the runtime config,
backs up periodically, and on SIGTERM stops it with SHUTDOWN SAVE and uploads the data. In
every case it serves the queue gauges on its Prometheus port.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError

from manycore_common import redisconn, redisready
from manycore_common.config import Config, ConfigError, RedisSection, RedisServer
from manycore_common.health import HealthServer
from manycore_common.lifecycle import run_service
from manycore_common.queue import ReliableQueue
from manycore_common.queuectl import queue_names

from . import acl, roles
from . import backup as backups
from . import server as redis_server
from .exporter import poll
from .metrics import BACKUPS, QueueCollector, readme_gauges

log = logging.getLogger(__name__)

SERVICE = "redis"
ADOPT_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Prepared:
    section: RedisSection
    store: backups.ObjectStore | None


def prepare(config: Config) -> Prepared:
    section: RedisSection = config.require("redis")
    store = None
    storage = config.customer.common_config.object_storage
    if section.server is not None:
        key, binary = "redis-server-binary", section.server.redis_server_binary
        if section.server.role == "sentinel":
            key, binary = "redis-sentinel-binary", section.server.redis_sentinel_binary
        if shutil.which(binary) is None:
            raise ConfigError([f"redis.server.{key}: {binary} not found"])
        data_node = section.server.role != "sentinel"
        if (
            data_node
            and section.reliable_queue.redis.sentinels
            and not section.server.announce_hostname
        ):
            # Without it a node cannot tell whether the primary the sentinels name is itself.
            raise ConfigError(
                ["redis.server.announce-hostname: required with sentinels (reliable-queue.redis)"]
            )
        if storage is None:
            log.info("object storage not configured: no backups, nothing to restore")
        else:
            store = backups.ObjectStore.from_config(storage)
    return Prepared(section, store)


async def serve(config: Config, prepared: Prepared, stop: asyncio.Event) -> None:
    section = prepared.section
    settings = section.server
    if settings is not None and settings.role == "sentinel":
        await _serve_sentinel(section, settings, stop)
        return
    running = None
    if settings is not None:
        users = redis_users(config, settings)
        running = await _start_data_node(section, settings, prepared.store, users)

    client = redisconn.connect(section.reliable_queue.redis)
    collector = QueueCollector(readme_gauges(config))
    REGISTRY.register(collector)

    health = HealthServer(section.prometheus, {"redis": redisready.answers(client)})
    await health.start()
    inner_stop = asyncio.Event()
    tasks = _background(config, prepared, client, collector, running, inner_stop)
    exit_code = 0
    try:
        if running is None:
            await stop.wait()
        else:
            stopped = asyncio.create_task(stop.wait())
            died = asyncio.create_task(running.wait())
            await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
            if died.done():
                log.error("redis-server exited unexpectedly", extra={"code": died.result()})
                exit_code = 1
            stopped.cancel()
    finally:
        inner_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await client.aclose()
        if running is not None and settings is not None and running.process.returncode is None:
            primary = await _is_primary(running)
            code = await redis_server.stop(running, settings.stop_timeout_seconds)
            if code == 0 and prepared.store is not None and primary:
                await _backup(prepared.store, settings, reason="stop", include_aof=True)
        await health.stop()
    if exit_code:
        sys.exit(exit_code)


def _background(
    config: Config,
    prepared: Prepared,
    client: Redis,
    collector: QueueCollector,
    running: redis_server.RunningServer | None,
    stop: asyncio.Event,
) -> list[asyncio.Task[None]]:
    """The exporter, the one-time adoption, and periodic backups (a data node with storage)."""
    section, settings = prepared.section, prepared.section.server
    # In a Sentinel set only the primary's pod reports the queue gauges (exporter.poll).
    reporting = None
    if running is not None and section.reliable_queue.redis.sentinels:
        reporting = functools.partial(_is_primary, running)
    tasks = [
        asyncio.create_task(poll(client, collector, section.poll_seconds, stop, reporting)),
        # The exporter's user only reads: adopting writes, as this process' administrator.
        asyncio.create_task(
            _adopt(running.admin if running else client, queue_names(config), stop)
        ),
    ]
    store = prepared.store
    backing_up = settings is not None and settings.backup_interval_seconds > 0
    if running is not None and store is not None and settings is not None and backing_up:
        tasks.append(asyncio.create_task(_periodic(running, store, settings, stop)))
    return tasks


def redis_users(config: Config, settings: RedisServer) -> list[str]:
    """The services' ACL users (``acl``), with a warning while the config lacks some."""
    missing = acl.missing_users(settings)
    if settings.users is None:
        log.warning(
            "every service shares one Redis user that may change every queue; give each "
            "its own (then set each service's reliable-queue.redis username/password): "
            + ", ".join(missing),
            extra={"missing": missing},
        )
    elif missing:
        log.warning(
            "services without a Redis user cannot connect: " + ", ".join(missing),
            extra={"missing": missing},
        )
    prefix = config.global_.reliable_queue.key_prefix
    return acl.service_rules(settings, acl.Keyspace.from_config(config, prefix))


async def _start_data_node(
    section: RedisSection,
    settings: RedisServer,
    store: backups.ObjectStore | None,
    users: Sequence[str],
) -> redis_server.RunningServer:
    """Primary or replica (``roles``); a backup is restored only by a primary the sentinels
    name no rival for, into an empty data directory."""
    connection = section.reliable_queue.redis
    named = None
    if connection.sentinels:
        named = await roles.ask_sentinels(connection, settings.master_name)
    start = roles.decide(settings, named)
    empty = not settings.data_dir.exists() or not any(settings.data_dir.iterdir())
    if start.sentinels_named and start.replicaof is None and empty:
        # Serving an empty data set as primary would make the replicas drop theirs.
        log.error("the sentinels name this node primary but it has no data: not starting")
        sys.exit(1)
    if store is not None and start.may_restore:
        try:
            await asyncio.to_thread(backups.restore, store, settings.data_dir)
        except backups.BackupError as exc:
            # Starting empty would let new mail pile on top of a lost queue; an operator
            # decides (fix storage, or remove object-storage to start empty).
            log.error("restore failed: not starting", extra={"error": str(exc)})
            sys.exit(1)
    elif store is not None:
        log.info("not restoring: this node gets its data from the primary")
    replicaof = start.replicaof
    log.info(
        "starting",
        extra={"replicaof": f"{replicaof.hostname}:{replicaof.port}" if replicaof else None},
    )
    return await redis_server.start(settings, users, extra=roles.data_node_lines(settings, start))


async def _is_primary(running: redis_server.RunningServer) -> bool:
    try:
        info = await running.admin.info("replication")
    except (RedisError, OSError):
        return False
    return bool(info.get("role") == "master")


async def _serve_sentinel(
    section: RedisSection, settings: RedisServer, stop: asyncio.Event
) -> None:
    """redis-sentinel, watching the primary the other sentinels name (else the configured
    first primary); no exporter here (the data nodes' pods export the queue gauges)."""
    connection = section.reliable_queue.redis
    named = None
    if connection.sentinels:
        named = await roles.ask_sentinels(connection, settings.master_name)
    assert settings.primary is not None  # the config requires it for this role
    password = settings.sentinel_password
    running = await redis_server.launch(
        settings,
        settings.redis_sentinel_binary,
        roles.sentinel_config(settings, named or settings.primary),
        (None, password.get_secret_value() if password else None),
    )

    async def sentinel_ok() -> bool:
        return bool(await running.admin.ping())

    health = HealthServer(section.prometheus, {"sentinel": sentinel_ok})
    await health.start()
    stopped = asyncio.create_task(stop.wait())
    died = asyncio.create_task(running.wait())
    await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    code = 1 if died.done() else 0
    if not died.done():
        await redis_server.stop(running, settings.stop_timeout_seconds, save=False)
    await health.stop()
    if code:
        log.error("redis-sentinel exited unexpectedly")
        sys.exit(code)


async def _adopt(client: Redis, names: list[str], stop: asyncio.Event) -> None:
    """Once per start: register processing lists that a version without the queues'
    registry left (the only keyspace SCAN; here, in the one process per Redis, and not in
    every consumer's start). Safe while consumers run: it only adds entries the reaper
    checks again atomically. Retried until Redis answers; ``manycore-queues adopt`` does
    the same on demand."""
    pending = list(names)
    while pending and not stop.is_set():
        try:
            await ReliableQueue(client, pending[0]).adopt_unregistered()
            pending.pop(0)
        except NoPermissionError:
            log.warning("not adopting: this Redis user may not write the queues' registry")
            return
        except (RedisError, OSError) as exc:
            log.warning("cannot adopt processing lists yet", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ADOPT_RETRY_SECONDS)


async def _backup(
    store: backups.ObjectStore, settings: RedisServer, *, reason: str, include_aof: bool
) -> None:
    try:
        await asyncio.to_thread(
            backups.backup,
            store,
            settings.data_dir,
            reason=reason,
            include_aof=include_aof,
            keep=settings.backups_kept,
        )
        BACKUPS.labels("ok").inc()
    except backups.BackupError as exc:
        BACKUPS.labels("failed").inc()
        log.error("backup failed", extra={"reason": reason, "error": str(exc)})


async def _periodic(
    running: redis_server.RunningServer,
    store: backups.ObjectStore,
    settings: RedisServer,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.backup_interval_seconds)
            return
        if not await _is_primary(running):
            continue  # the primary backs up; replicas hold the same data
        try:
            await redis_server.bgsave(running)
        except Exception as exc:  # noqa: BLE001 - a failed snapshot must not stop Redis
            BACKUPS.labels("failed").inc()
            log.error("snapshot for backup failed", extra={"error": str(exc)})
            continue
        # The RDB of a finished BGSAVE is consistent; the AOF is being written, so leave it.
        await _backup(store, settings, reason="periodic", include_aof=False)


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve)
