"""``manycore-httpreceiver``: wires config, Redis, the HTTP API and the health server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiohttp import web
from redis.asyncio import Redis

from manycore_common import heaptrim, logs, redisconn, redisready, workers
from manycore_common.auth import Credentials
from manycore_common.config import Config, HttpReceiverSection
from manycore_common.health import HealthServer
from manycore_common.intake import Intake
from manycore_common.lifecycle import run_service
from manycore_common.loginthrottle import LoginThrottle
from manycore_common.queue import ReliableQueue

from . import suppressions
from .app import make_app
from .unsubscribe import Unsubscribe, add_routes

log = logging.getLogger(__name__)

SERVICE = "httpreceiver"
#: How long a graceful stop lets requests in progress finish.
DRAIN_SECONDS = 20.0


def prepare(config: Config) -> HttpReceiverSection:
    section: HttpReceiverSection = config.require("httpreceiver")
    return section


def _unsubscribe_routes(
    app: web.Application, config: Config, section: HttpReceiverSection, redis: Redis
) -> None:
    """The one-click unsubscribe routes, when common-config.unsubscribe-secret is set."""
    secret = config.customer.common_config.unsubscribe_secret
    if secret is None:
        log.info("common-config.unsubscribe-secret not set: no one-click unsubscribe route")
        return
    event_queue = ReliableQueue(redis, config.global_.backdata.queue_name)
    max_age = section.unsubscribe_token_max_age_days * 24 * 3600
    suppression = config.customer.common_config.suppression
    add_routes(
        app, Unsubscribe(secret.get_secret_value().encode(), event_queue, max_age, suppression)
    )


async def serve(config: Config, prepared: HttpReceiverSection, stop: asyncio.Event) -> None:
    section = prepared
    # One log line per request: written in batches, warnings and errors at once (logs).
    logs.buffer_info(section.log_buffer_lines, section.log_buffer_seconds)
    redis = redisconn.connect(section.reliable_queue.redis)
    intake = Intake.from_config(config, redis, section.max_message_size)
    app = make_app(
        intake,
        Credentials(section.auth_logins),
        LoginThrottle(section.auth_throttle),
        section.trusted_proxies,
        section.request_timeout_seconds,
    )
    suppressions.install(app, redis, config.customer.common_config.suppression)
    _unsubscribe_routes(app, config, section, redis)
    # keepalive_timeout is armed when a connection opens or a response ends, and bytes that
    # do not complete a header section do not re-arm it: it bounds dribbled headers as well
    # as idle keep-alive connections. The body has its own bound (app.py).
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=DRAIN_SECONDS,
        keepalive_timeout=section.request_timeout_seconds,
    )
    await runner.setup()
    # A worker serves the connections its parent hands it and leaves /metrics and the probes
    # to the parent (see workers).
    handoff = workers.handoff()
    inbox: workers.Inbox | None = None
    if handoff is None:
        await web.TCPSite(runner, section.bind.inet_interface, section.bind.inet_port).start()
    else:
        assert runner.server is not None  # set by setup()
        inbox = workers.Inbox(handoff.channel, runner.server)
        inbox.start()
    log.info(
        "http listening",
        extra={"address": section.bind.inet_interface, "port": section.bind.inet_port},
    )

    health = HealthServer(section.prometheus, {"redis": redisready.answers(redis)})
    if handoff is None:
        await health.start()
    server = runner.server
    assert server is not None
    # The heap's free pages go back once a burst of requests is over (heaptrim).
    trimmer = asyncio.create_task(heaptrim.trim_when_idle(lambda: server.requests_count, stop))
    try:
        await stop.wait()
    finally:
        trimmer.cancel()
        await asyncio.gather(trimmer, return_exceptions=True)
        # cleanup() stops listening first, then waits for requests in progress.
        if inbox is not None:
            inbox.close()
        await runner.cleanup()
        await health.stop()
        await redis.aclose()
        logs.unbuffer()


def _section(prepared: HttpReceiverSection) -> HttpReceiverSection:
    return prepared


def main(argv: Sequence[str] | None = None) -> None:
    run_service(SERVICE, argv, prepare, serve, front_door=_section)
