"""A real webhook for tests: an aiohttp server on 127.0.0.1 in its own thread (so synchronous
tests can wait on it), answering each POST as the test scripted, recording what it accepted."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.helpers import LOOPBACK, free_port


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to sleep before answering (past the client's timeout, for the timeout case).
    delay: float = 0.0


ACCEPT = Answer()


@dataclass(frozen=True)
class Request:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int


class Webhook:
    def __init__(self, port: int | None = None, ssl_context: ssl.SSLContext | None = None):
        self.port = port or free_port()
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        #: Answers for the next requests, in order; then ``default``.
        self.script: list[Answer] = []
        self.default = ACCEPT
        self.requests: list[Request] = []
        #: Events of answered-2xx POSTs, in arrival order (duplicates kept).
        self.received: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}/events"

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> Webhook:
        self._call(self._start())
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, self.port, ssl_context=self.ssl_context)
        await site.start()

    def stop(self) -> None:
        """Stop listening (connections are refused until ``start`` again)."""
        if self._runner is not None:
            self._call(self._runner.cleanup())
            self._runner = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            answer = self.script.pop(0) if self.script else self.default
            self.requests.append(Request(time.time(), dict(request.headers), body, answer.status))
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if 200 <= answer.status < 300:
            events = json.loads(body)
            with self.lock:
                self.received.extend(events)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    def ids(self) -> set[str]:
        with self.lock:
            return {e["id"] for e in self.received}

    def count(self) -> int:
        with self.lock:
            return len(self.received)
