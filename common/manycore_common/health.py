"""One small HTTP server per service: ``/metrics`` (Prometheus text format), ``/livez`` and
``/readyz`` (docs/ARCHITECTURE.md#services). Liveness says only that the event loop answers;
readiness runs the service's checks (Redis reachable, listener bound) and answers 503 naming what
failed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import prometheus_client
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from .config import Prometheus

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]

# The README's counters are named exactly (``…_total``); prometheus_client would add a
# ``…_created`` series beside each, which nobody asked for.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class HealthServer:
    def __init__(
        self,
        settings: Prometheus,
        checks: Mapping[str, ReadinessCheck],
        registry: CollectorRegistry = REGISTRY,
        check_timeout: float = 2.0,
    ) -> None:
        self.settings = settings
        self.checks = dict(checks)
        self.registry = registry
        self.check_timeout = check_timeout
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _livez(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        failing = [name for name, check in self.checks.items() if not await self._run(check)]
        if failing:
            return web.json_response({"status": "not ready", "failing": failing}, status=503)
        return web.json_response({"status": "ready"})

    async def _run(self, check: ReadinessCheck) -> bool:
        try:
            return await asyncio.wait_for(check(), self.check_timeout)
        except Exception:  # noqa: BLE001 - any failure of a check means "not ready"
            return False

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.inet_interface, self.settings.inet_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.inet_port
        log.info(
            "metrics listening",
            extra={"address": self.settings.inet_interface, "port": self.port},
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
