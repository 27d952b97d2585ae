"""The webhook inbox of the local stack: receives BackData's POSTs and records every event.

``POST /`` takes a JSON array of events and appends them to ``events.jsonl``; ``GET /events``
lists what arrived (newest last), ``GET /events?event=bounce`` only one kind. With a signing
secret it checks ``X-Manycore-Signature`` and refuses (401) what does not verify."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("devstack.webhook")

EVENTS_KEY = web.AppKey("events", list)
FILE_KEY = web.AppKey("file", Path)
SECRET_KEY: web.AppKey[bytes | None] = web.AppKey("secret")


def signature_ok(secret: bytes, header: str, body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, v1 = parts.get("t", ""), parts.get("v1", "")
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, v1)


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    secret = request.app[SECRET_KEY]
    if secret and not signature_ok(secret, request.headers.get("X-Manycore-Signature", ""), body):
        return web.json_response({"error": "bad signature"}, status=401)
    try:
        batch: Any = json.loads(body)
    except ValueError:
        return web.json_response({"error": "not JSON"}, status=400)
    if not isinstance(batch, list):
        return web.json_response({"error": "expected a JSON array"}, status=400)
    request.app[EVENTS_KEY].extend(batch)
    with request.app[FILE_KEY].open("a") as out:
        for event in batch:
            out.write(json.dumps(event) + "\n")
    log.info("events received", extra={"count": len(batch)})
    return web.json_response({"received": len(batch)})


async def list_events(request: web.Request) -> web.Response:
    kind = request.query.get("event")
    events = [e for e in request.app[EVENTS_KEY] if kind is None or e.get("event") == kind]
    return web.json_response(events)


def make_app(directory: Path, secret: bytes | None = None) -> web.Application:
    directory.mkdir(parents=True, exist_ok=True)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[EVENTS_KEY] = []
    app[FILE_KEY] = directory / "events.jsonl"
    app[SECRET_KEY] = secret
    app.router.add_post("/", receive)
    app.router.add_get("/events", list_events)
    return app
