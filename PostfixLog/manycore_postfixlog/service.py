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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import redisconn, redisready
from manycore_common.config import Config, PostfixLogSection
from manycore_common.consuming import consuming
from manycore_common.health import HealthServer
from manycore_common.lifecycle import run_service
from manycore_common.loops import until_stop_or_crash
from manycore_common.queue import ReliableQueue, configured

from . import requeue
from . import settings as settings_module
from .app import SERVICE, PostfixLog
from .instance import PostfixError, PostfixInstance
from .intake import TAKE_TIMEOUT
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


@contextlib.contextmanager
def _exit_on_postfix_error() -> Iterator[None]:
    """Postfix cannot be configured or started: exit 1."""
    try:
        yield
    except PostfixError as exc:
        log.error("cannot start postfix", extra={"error": str(exc)})
        raise SystemExit(1) from None


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
    section = prepared.section
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
    tasks: list[asyncio.Task[None]] = []  # the log loop, the monitor and the reload watcher
    started = False
    try:
        # Its config is written and checked before waiting for Redis; Postfix starts after.
        with _exit_on_postfix_error():
            app.instance.write_config()
            await app.instance.check()
        async with consuming([app.consumer], stop) as registered:
            if not registered:
                return
            with _exit_on_postfix_error():
                await app.start_postfix()
            await app.processor.start()
            started = True
            await _feed(config, app, tasks, monitor_stop, stop)
        # Released (above): what the feeders held is back in Redis. Now Postfix's own queue.
        await app.drain_postfix()
    finally:
        await _shut_down(app, tasks, monitor_stop, started)
        await health.stop()
        await redis.aclose()


async def _feed(
    config: Config,
    app: PostfixLog,
    tasks: list[asyncio.Task[None]],
    monitor_stop: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Feed Postfix and follow its log until ``stop``; then stop pulling and wait for the
    feeders (what they still hold is released by ``consuming``)."""
    tasks.append(asyncio.create_task(app.follow_log()))
    tasks.append(asyncio.create_task(app.monitor(monitor_stop)))
    feeders = [asyncio.create_task(app.feed()) for _ in range(app.settings.smtp_connections)]
    try:
        reloader = Reloader(config, config_files(), app.instance, app.apply_settings)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.requested.set)
        tasks.append(asyncio.create_task(reloader.watch(stop)))
        log.info("feeding postfix", extra={"instance": app.settings.instance})
        try:
            # A feeder or the log loop that dies of a bug stops the service (exit non-zero,
            # restarted) rather than leaving it up with no feeding or no events.
            await until_stop_or_crash(stop, [*feeders, *tasks], "a PostfixLog loop")
        finally:
            reloader.requested.set()  # wakes the watcher, which sees the stop
    finally:
        app.feed_stop.set()
        await asyncio.gather(*feeders, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve)
