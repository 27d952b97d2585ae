"""The webhook inbox of the local stack: receives BackData's POSTs and records every event.

``POST /`` takes a JSON array of events and appends them to ``events.jsonl`` (read back at
start, so a restarted inbox still lists what it had received, as a customer's database
would); ``GET /events``
lists what arrived (newest last), ``GET /events?event=bounce`` only one kind; ``GET
/received`` lists what the sink MX received; ``GET /`` shows both on a page that refreshes
itself. With a signing secret it checks ``X-Manycore-Signature`` and refuses (401) what does
not verify."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("devstack.webhook")

EVENTS_KEY: web.AppKey[list[dict[str, Any]]] = web.AppKey("events")
FILE_KEY = web.AppKey("file", Path)
SECRET_KEY: web.AppKey[bytes | None] = web.AppKey("secret")
SINK_KEY = web.AppKey("sink", Path)


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
    # The file first: what is listed has been stored, and a batch whose write failed is
    # answered 500, which BackData retries.
    with request.app[FILE_KEY].open("a") as out:
        out.write("".join(json.dumps(event) + "\n" for event in batch))
    request.app[EVENTS_KEY].extend(batch)
    log.info("events received", extra={"count": len(batch)})
    return web.json_response({"received": len(batch)})


async def list_events(request: web.Request) -> web.Response:
    kind = request.query.get("event")
    events = [e for e in request.app[EVENTS_KEY] if kind is None or e.get("event") == kind]
    return web.json_response(events)


def received(sink_dir: Path) -> list[dict[str, Any]]:
    path = sink_dir / "received.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def list_received(request: web.Request) -> web.Response:
    return web.json_response(received(request.app[SINK_KEY]))


_COLUMNS = ("event", "uuid", "streamid", "type", "rcpt", "email", "category", "reason")


def _row(cells: list[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


async def page(request: web.Request) -> web.Response:
    stored: list[dict[str, Any]] = request.app[EVENTS_KEY]
    events = stored[::-1]
    mail = list(reversed(received(request.app[SINK_KEY])))
    event_rows = "".join(
        _row(
            [time.strftime("%H:%M:%S", time.localtime(e.get("timestamp", 0)))]
            + [str(e.get(c, "")) for c in _COLUMNS]
        )
        for e in events
    )
    mail_rows = "".join(
        _row(
            [
                time.strftime("%H:%M:%S", time.localtime(r["at"])),
                r["rcpt"],
                r["mail_from"],
                "pass" if r["dkim_ok"] else "FAIL",
            ]
        )
        for r in mail
    )
    head = "".join(f"<th>{c}</th>" for c in ("time", *_COLUMNS))
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="3">
<title>Manycore-Mail webhook inbox</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}}</style></head>
<body><h1>Webhook inbox</h1>
<h2 id="events-title">Events ({len(events)})</h2>
<table id="events"><tr>{head}</tr>{event_rows}</table>
<h2 id="mail-title">Received by the sink MX ({len(mail)})</h2>
<table id="mail"><tr><th>time</th><th>rcpt</th><th>return path</th><th>DKIM</th></tr>
{mail_rows}</table>
<p>JSON: <a href="/events">/events</a>, <a href="/received">/received</a></p>
</body></html>"""
    return web.Response(text=body, content_type="text/html")


def load(path: Path) -> list[dict[str, Any]]:
    """The events stored by earlier runs. A process killed in the middle of a write leaves a
    torn last line; that batch was never answered 200, so BackData sends it again: cut it off,
    or the next append would run on from it and spoil a good line too."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        kept = text[: text.rfind("\n") + 1]
        log.warning("cutting a torn last line", extra={"file": str(path)})
        path.write_text(kept)
        text = kept
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def make_app(
    directory: Path, secret: bytes | None = None, sink_dir: Path | None = None
) -> web.Application:
    directory.mkdir(parents=True, exist_ok=True)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[FILE_KEY] = directory / "events.jsonl"
    app[EVENTS_KEY] = load(app[FILE_KEY])
    app[SECRET_KEY] = secret
    app[SINK_KEY] = sink_dir or directory
    app.router.add_post("/", receive)
    app.router.add_get("/", page)
    app.router.add_get("/events", list_events)
    app.router.add_get("/received", list_received)
    return app
