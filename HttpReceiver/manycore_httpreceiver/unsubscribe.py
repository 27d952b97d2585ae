"""One-click unsubscribe (RFC 8058): ``POST /v1/unsubscribe/<token>`` emits an ``unsubscribe``
event; ``GET`` shows a confirmation page whose button makes that POST.

No Basic auth: these URLs are in the List-Unsubscribe header of every message, and the token
is the authorization (see manycore_common.unsubscribe). GET never unsubscribes by itself:
link scanners and previews fetch URLs they find (RFC 8058 §3.3 is about exactly this).
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter
from redis.exceptions import RedisError

from manycore_common import events
from manycore_common.queue import ReliableQueue
from manycore_common.unsubscribe import parse_token

log = logging.getLogger(__name__)

RESULTS = Counter(
    "httpreceiver_unsubscribe",
    "One-click unsubscribe requests, by result (ok, repeated, invalid, unavailable)",
    ["result"],
)
for _result in ("ok", "repeated", "invalid", "unavailable"):
    RESULTS.labels(_result)

#: A repeated POST of the same token within this time gives no second event.
ONCE_SECONDS = 90 * 24 * 3600


@dataclass(frozen=True)
class Unsubscribe:
    secret: bytes
    event_queue: ReliableQueue


UNSUBSCRIBE_KEY = web.AppKey("unsubscribe", Unsubscribe)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto">
<h1>{title}</h1>{body}</body></html>
"""


def page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        content_type="text/html",
        status=status,
    )


def _token(request: web.Request) -> tuple[Unsubscribe, tuple[str, str | None] | None]:
    settings = request.app[UNSUBSCRIBE_KEY]
    return settings, parse_token(settings.secret, request.match_info["token"])


async def confirm_page(request: web.Request) -> web.Response:
    _, parsed = _token(request)
    if parsed is None:
        RESULTS.labels("invalid").inc()
        return page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
    return page(
        "Unsubscribe",
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<p>Stop receiving these emails?</p><button type="submit">Unsubscribe</button></form>',
    )


async def one_click(request: web.Request) -> web.Response:
    settings, parsed = _token(request)
    if parsed is None:
        RESULTS.labels("invalid").inc()
        return web.json_response(
            {"error": "unknown unsubscribe link", "reason": "invalid"}, status=404
        )
    uuid, stream_id = parsed
    event = events.new_event("unsubscribe", uuid=uuid, streamid=stream_id)
    try:
        pushed = await events.emit_once(
            settings.event_queue,
            event,
            source="httpreceiver",
            once_key=f"unsubscribed:{uuid}",
            ttl=ONCE_SECONDS,
        )
    except (RedisError, OSError) as exc:
        RESULTS.labels("unavailable").inc()
        log.warning("unsubscribe not recorded", extra={"uuid": uuid, "error": str(exc)})
        return web.json_response(
            {"error": "try again later", "reason": "redis-unavailable"},
            status=503,
            headers={"Retry-After": "30"},
        )
    RESULTS.labels("ok" if pushed else "repeated").inc()
    log.info("unsubscribed", extra={"uuid": uuid, "repeated": not pushed})
    # A person who pressed the button on our page gets a page; a mailbox provider's one-click
    # POST (RFC 8058 §3.2) gets a short machine answer.
    if "text/html" in request.headers.get("Accept", ""):
        return page("Unsubscribed", "<p>You will not receive these emails any more.</p>")
    return web.json_response({"unsubscribed": True})


def add_routes(app: web.Application, settings: Unsubscribe) -> None:
    app[UNSUBSCRIBE_KEY] = settings
    app.router.add_get("/v1/unsubscribe/{token}", confirm_page)
    app.router.add_post("/v1/unsubscribe/{token}", one_click)
