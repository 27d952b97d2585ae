"""One-click unsubscribe (RFC 8058): ``POST /v1/unsubscribe/<token>`` emits an ``unsubscribe``
event; ``GET`` shows a confirmation page whose button makes that POST.

A token names the recipient (manycore_common.unsubscribe): the event carries ``rcpt``, and the
same script that pushes it writes the suppression entry under the token's From domain (and
stream, with ``suppression.unsubscribe-scope: stream``), exactly as MxServer does for a mailto
unsubscribe (``suppressionpolicy.ops_for_event``). The once-marker is per (message,
recipient), so each recipient of one message can unsubscribe. Tokens minted before they named
the recipient still give a per-message event without ``rcpt`` (no suppression entry) and a
per-message marker, until they expire.

No Basic auth: these URLs are in the List-Unsubscribe header of every message, and the token
is the authorization (see manycore_common.unsubscribe). GET never unsubscribes by itself:
link scanners and previews fetch URLs they find (RFC 8058 §3.3 is about exactly this).

A token older than ``httpreceiver.unsubscribe-token-max-age-days`` gets 410 Gone with a page
that sends the person to the message's mail unsubscribe (List-Unsubscribe's mailto, which
MxServer turns into the same event whatever the message's age): a link leaked or forwarded
long ago should not work for ever, but nobody should be left without a way out. Tokens from
before issue times (no time inside) are honoured for the same age counted from the first one
this version saw (``unsubscribe:untimed-since`` in Redis): all of them were minted before the
upgrade, and refusing a real unsubscribe is worse than honouring an old link a while longer.
``expired`` is pure; the handlers do the IO.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web
from redis.exceptions import RedisError

from manycore_common import events, keyspace
from manycore_common.config import SuppressionSettings
from manycore_common.queue import ReliableQueue
from manycore_common.suppressionmetrics import count_suppressions
from manycore_common.suppressionpolicy import ops_for_event
from manycore_common.suppressionstore import emit_once_suppressing
from manycore_common.unsubscribe import Token, once_marker, read_token

from .metrics import RESULTS

log = logging.getLogger(__name__)


SOURCE = "httpreceiver"
#: A repeated POST of the same token within this time gives no second event (at least).
ONCE_SECONDS = 90 * 24 * 3600


@dataclass(frozen=True)
class Unsubscribe:
    secret: bytes
    event_queue: ReliableQueue
    #: Older tokens get 410 (httpreceiver.unsubscribe-token-max-age-days).
    max_age_seconds: float = 90 * 24 * 3600
    #: common-config.suppression: whether, and how scoped, an unsubscribe suppresses.
    suppression: SuppressionSettings = field(default_factory=SuppressionSettings)


def expired(token: Token, now: float, max_age: float, untimed_since: float | None) -> bool:
    """Whether a genuine token is too old. A token without an issue time counts as issued
    when the first such token was seen (``untimed_since``; None: not known, honoured)."""
    issued = token.issued if token.issued is not None else untimed_since
    return issued is not None and now - issued > max_age


async def _untimed_since(settings: Unsubscribe, now: float) -> float:
    """When the first untimed token was seen, recording ``now`` if this is the first."""
    # SET NX GET (Redis 7.0): one round trip, and concurrent workers agree on one value.
    key = keyspace.current().untimed_since()
    previous = await settings.event_queue.redis.set(key, int(now), nx=True, get=True)
    return now if previous is None else float(previous)


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


_EXPIRED_BODY = (
    "<p>This unsubscribe link is too old to be used.</p>"
    "<p>You can still unsubscribe by email: open the message, and use your mail program's "
    "Unsubscribe button, or send an email to the unsubscribe address in the message's "
    "List-Unsubscribe header (it begins with <code>mailto:</code>).</p>"
)


def _token(request: web.Request) -> tuple[Unsubscribe, Token | None]:
    settings = request.app[UNSUBSCRIBE_KEY]
    return settings, read_token(settings.secret, request.match_info["token"])


async def _is_expired(settings: Unsubscribe, token: Token) -> bool:
    """``expired`` with the clock and, for an untimed token, Redis; raises RedisError."""
    now = time.time()
    since = None if token.issued is not None else await _untimed_since(settings, now)
    return expired(token, now, settings.max_age_seconds, since)


def _gone(request: web.Request, uuid: str) -> web.Response:
    RESULTS.labels("expired").inc()
    log.info("unsubscribe link expired", extra={"uuid": uuid})
    if request.method == "GET" or "text/html" in request.headers.get("Accept", ""):
        return page("Link expired", _EXPIRED_BODY, 410)
    return web.json_response(
        {"error": "unsubscribe link expired: use the message's mailto", "reason": "expired"},
        status=410,
    )


async def confirm_page(request: web.Request) -> web.Response:
    settings, parsed = _token(request)
    if parsed is None:
        RESULTS.labels("invalid").inc()
        return page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)
    try:
        if await _is_expired(settings, parsed):
            return _gone(request, parsed.uuid)
    except (RedisError, OSError):
        pass  # the page only asks; the POST checks again (and needs Redis anyway)
    return page(
        "Unsubscribe",
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<p>Stop receiving these emails?</p><button type="submit">Unsubscribe</button></form>',
    )


async def _record(settings: Unsubscribe, token: Token) -> bool:
    """Push the event (with its suppression entry when the token names the recipient) unless
    its once-marker is set; True if pushed. Raises RedisError."""
    event = events.new_event(
        "unsubscribe", uuid=token.uuid, streamid=token.stream_id, rcpt=token.rcpt
    )
    ttl = max(ONCE_SECONDS, int(settings.max_age_seconds))
    marker = once_marker(token.uuid, token.rcpt)
    domains = [token.domain] if token.domain else []
    ops = ops_for_event(event, domains, settings.suppression)
    pushed = await emit_once_suppressing(
        settings.event_queue, [(marker, event)], [ops], source=SOURCE, ttl=ttl
    )
    if pushed:
        count_suppressions(ops, SOURCE)
    return pushed == 1


async def one_click(request: web.Request) -> web.Response:
    settings, parsed = _token(request)
    if parsed is None:
        RESULTS.labels("invalid").inc()
        return web.json_response(
            {"error": "unknown unsubscribe link", "reason": "invalid"}, status=404
        )
    uuid = parsed.uuid
    try:
        if await _is_expired(settings, parsed):
            return _gone(request, uuid)
        pushed = await _record(settings, parsed)
    except (RedisError, OSError) as exc:
        RESULTS.labels("unavailable").inc()
        log.warning("unsubscribe not recorded", extra={"uuid": uuid, "error": str(exc)})
        return web.json_response(
            {"error": "try again later", "reason": "redis-unavailable"},
            status=503,
            headers={"Retry-After": "30"},
        )
    RESULTS.labels("ok" if pushed else "repeated").inc()
    log.info(
        "unsubscribed",
        extra={"uuid": uuid, "repeated": not pushed, "per_recipient": parsed.rcpt is not None},
    )
    # A person who pressed the button on our page gets a page; a mailbox provider's one-click
    # POST (RFC 8058 §3.2) gets a short machine answer.
    if "text/html" in request.headers.get("Accept", ""):
        return page("Unsubscribed", "<p>You will not receive these emails any more.</p>")
    return web.json_response({"unsubscribed": True})


def add_routes(app: web.Application, settings: Unsubscribe) -> None:
    app[UNSUBSCRIBE_KEY] = settings
    app.router.add_get("/v1/unsubscribe/{token}", confirm_page)
    app.router.add_post("/v1/unsubscribe/{token}", one_click)
