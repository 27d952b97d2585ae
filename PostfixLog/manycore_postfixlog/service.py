"""``manycore-postfixlog``: run a private Postfix, feed it from the to-postfix queue, and turn
its log into events. What runs meanwhile (feeders, the log loop, the monitor) is ``app``.

Graceful stop (README "Termination"): stop pulling and give back what is held, keep Postfix
from retrying deferred mail, let it finish the deliveries in progress for at most
``stop-grace-seconds``, stop it, read the log to its end, and hand what is left in its queue
back to Redis, or keep it for the next start (``queue-on-stop``, ``requeue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import redisconn, redisready
from manycore_common.config import Config, PostfixLogSection
from manycore_common.health import HealthServer
from manycore_common.lifecycle import run_service
from manycore_common.queue import ReliableQueue, configured

from . import requeue
from . import settings as settings_module
from .app import SERVICE, TAKE_TIMEOUT, PostfixLog
from .instance import PostfixError, PostfixInstance
from .reload import Reloader, config_files
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    section: PostfixLogSection
    settings: Settings


def prepare(config: Config) -> Prepared:
    section: PostfixLogSection = config.require("postfixlog")
    return Prepared(section, settings_module.from_config(config))


def _app(config: Config, prepared: Prepared, redis: Redis) -> PostfixLog:
    rq = config.global_.reliable_queue
    incoming = configured(redis, config.global_.postfix.incoming_queue_name, rq)
    event_queue = ReliableQueue(redis, config.global_.backdata.queue_name)
    instance = PostfixInstance(prepared.settings)
    return PostfixLog(prepared.settings, redis, incoming, event_queue, instance)


async def _start_postfix(app: PostfixLog, stop: asyncio.Event) -> bool:
    """Write its config, check it, wait for Redis, then start Postfix (exit 1 if it fails).
    False when told to stop while waiting for Redis."""
    try:
        app.instance.write_config()
        await app.instance.check()
        if not await redisready.register_when_up(app.consumer, stop):
            return False
        await app.start_postfix()
    except PostfixError as exc:
        log.error("cannot start postfix", extra={"error": str(exc)})
        raise SystemExit(1) from None
    return True


async def _shut_down(
    app: PostfixLog, tasks: list[asyncio.Task[None]], monitor_stop: asyncio.Event, started: bool
) -> None:
    """Stop Postfix and the loops, read the log to its end, hand Postfix's queue back (or
    keep it: ``queue-on-stop``)."""
    app.feed_stop.set()
    app.expected_stop = True
    monitor_stop.set()
    await app.instance.stop()
    app.log_stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if started:
        with contextlib.suppress(RedisError, OSError):
            await app.processor.drain()
            await requeue.settle_on_stop(app.instance, app.state)
    app.follower.close()


async def serve(config: Config, prepared: Prepared, stop: asyncio.Event) -> None:
    section, settings = prepared.section, prepared.settings
    redis = redisconn.connect(section.reliable_queue.redis, blocking_timeout=TAKE_TIMEOUT)
    app = _app(config, prepared, redis)

    async def postfix_ok() -> bool:
        # Not a TCP probe of smtpd: each would add "lost connection after CONNECT" to the log.
        return app.instance.ready

    health = HealthServer(
        section.prometheus, {"redis": redisready.answers(redis), "postfix": postfix_ok}
    )
    await health.start()
    monitor_stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []  # the log loop, the monitor and the heartbeat
    started = False
    try:
        if not await _start_postfix(app, stop):
            return
        await app.processor.start()
        started = True
        tasks.append(asyncio.create_task(app.follow_log()))
        tasks.append(asyncio.create_task(app.monitor(monitor_stop)))
        tasks.append(asyncio.create_task(app.consumer.keep_alive(app.feed_stop)))
        feeders = [asyncio.create_task(app.feed()) for _ in range(settings.smtp_connections)]
        reloader = Reloader(config, config_files(), app.instance, app.apply_settings)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.requested.set)
        tasks.append(asyncio.create_task(reloader.watch(stop)))
        log.info("feeding postfix", extra={"instance": settings.instance})
        await stop.wait()
        reloader.requested.set()  # wakes the watcher, which sees the stop
        app.feed_stop.set()
        await asyncio.gather(*feeders, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await app.consumer.release()
        await app.drain_postfix()
    finally:
        await _shut_down(app, tasks, monitor_stop, started)
        await health.stop()
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve)
