"""One small HTTP server per service: ``/metrics`` (Prometheus text format), ``/livez`` and
``/readyz`` (docs/ARCHITECTURE.md#services). Liveness says only that the event loop answers;
readiness runs the service's checks (Redis reachable, listener bound) and answers 503 naming what
failed.

Plain asyncio rather than aiohttp: its only clients are Prometheus and the kubelet (one GET,
answered and closed, RFC 9112), and aiohttp's web modules cost about 12 MB of RSS in every
process, the Receiver's among them (README, Performance)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from .config import Prometheus

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
#: (status, content type, body) of an answer.
Answer = tuple[int, str, bytes]

#: A request's line and headers must arrive within this many seconds and 8 KiB.
REQUEST_SECONDS = 10.0
MAX_REQUEST_HEAD = 8192
_JSON = "application/json; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip


def _json(status: int, value: object) -> Answer:
    return status, _JSON, json.dumps(value).encode()


def request_target(head: bytes) -> tuple[bytes, bytes] | None:
    """(method, path without the query) of a request head (RFC 9112 §3: request-line =
    method SP request-target SP HTTP-version); None when the line is not one."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    return parts[0], parts[1].split(b"?", 1)[0]


def response(answer: Answer, *, head_only: bool = False) -> bytes:
    status, content_type, body = answer
    lines = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return lines.encode() + (b"" if head_only else body)


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
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def answer(self, method: bytes, path: bytes) -> Answer:
        if path not in (b"/metrics", b"/livez", b"/readyz"):
            return _json(404, {"status": "not found"})
        if method not in (b"GET", b"HEAD"):
            return _json(405, {"status": "method not allowed"})
        if path == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == b"/livez":
            return _json(200, {"status": "ok"})
        failing = [name for name, check in self.checks.items() if not await self._run(check)]
        if failing:
            return _json(503, {"status": "not ready", "failing": failing})
        return _json(200, {"status": "ready"})

    async def _run(self, check: ReadinessCheck) -> bool:
        try:
            return await asyncio.wait_for(check(), self.check_timeout)
        except Exception:  # noqa: BLE001 - any failure of a check means "not ready"
            return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, one answer, then close (``Connection: close``)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_SECONDS)
            target = request_target(head)
            if target is None:
                writer.write(response(_json(400, {"status": "bad request"})))
            else:
                answer = await self.answer(*target)
                writer.write(response(answer, head_only=target[0] == b"HEAD"))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sent no complete head in time, or went away: just close
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self.settings.inet_interface,
            self.settings.inet_port,
            limit=MAX_REQUEST_HEAD,
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.inet_port
        log.info(
            "metrics listening",
            extra={"address": self.settings.inet_interface, "port": self.port},
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
