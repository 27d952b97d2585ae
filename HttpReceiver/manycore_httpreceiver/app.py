"""The HTTP API: ``POST /v1/mail/send`` with Basic auth; the body is the raw RFC 5322 message.

Every error is JSON ``{"error": "<what is wrong>", "reason": "<code>"}`` with a status that
says who must act: 400 bad message, 401 credentials (with ``WWW-Authenticate``), 413 too
large, 415 wrong Content-Type, 429 too many failed logins, 503 with ``Retry-After`` when Redis
cannot take the message now, 408 when the body does not arrive within the request timeout.
``200`` comes only after Redis holds the message.

Idempotent submission (``manycore_common.idempotency``): a message whose X-Uuid, or whose
request's ``Idempotency-Key`` header (draft-ietf-httpapi-idempotency-key-header; it takes
precedence), was claimed within the window gets the first answer again with
``"duplicate": true`` and is not queued again. A malformed key gets 400, a key that comes
back with another X-Uuid 422 (the draft's answers).

Failed logins are throttled per (client address, login name), and per address for names
that are no login (``login``: the rules and the threat model they answer). Behind
``trusted-proxies`` the client is the nearest X-Forwarded-For hop outside them; failures are
never counted against a proxy's own address (when X-Forwarded-For names no other client):
that would lock out every client behind the proxy, so it is refused with a warning (the
ranges are too wide, or the proxy sets no header) and
``httpreceiver_proxy_lockouts_refused_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network, IPv6Network, ip_address

from aiohttp import BasicAuth, web

from manycore_common.auth import Credentials
from manycore_common.idempotency import parse_idempotency_key
from manycore_common.intake import DROPPED, Intake, Submitted, TemporarilyUnavailable
from manycore_common.loginthrottle import LoginThrottle, attempt_key
from manycore_common.message import MessageRejected, too_large

from .metrics import AUTH_FAILURES, DUPLICATES, PROXY_LOCKOUTS_REFUSED

log = logging.getLogger(__name__)

ACCEPTED_TYPES = ("application/octet-stream", "message/rfc822")
RETRY_AFTER_SECONDS = 30

#: At most one misconfiguration warning about a proxy per this many seconds.
PROXY_WARNING_SECONDS = 60.0

INTAKE_KEY = web.AppKey("intake", Intake)
CREDENTIALS_KEY = web.AppKey("credentials", Credentials)
THROTTLE_KEY = web.AppKey("throttle", LoginThrottle)
TRUSTED_KEY: web.AppKey[tuple[IPv4Network | IPv6Network, ...]] = web.AppKey("trusted_proxies")
BODY_TIMEOUT_KEY = web.AppKey("body_timeout", float)
#: When the last proxy misconfiguration warning was logged (monotonic seconds).
PROXY_WARNED_KEY: web.AppKey[list[float]] = web.AppKey("proxy_warned")
#: Authorization header values already found valid, with their login (``VerifiedLogins``).
VERIFIED_KEY = web.AppKey("verified", dict[str, str])
#: At most this many header values are remembered (a client that is refused is not); a
#: pod has a handful of logins, so more means something odd, and the table starts again.
MAX_VERIFIED = 64


def error(
    status: int, reason: str, text: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": text, "reason": reason}, status=status, headers=headers)


def unauthorized(text: str) -> web.Response:
    return error(
        401,
        "unauthorized",
        text,
        {"WWW-Authenticate": 'Basic realm="manycore-mail", charset="UTF-8"'},
    )


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, …) as JSON too, so clients parse one format."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason, None)


def client_address(request: web.Request) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    address in X-Forwarded-For that is not one of our proxies."""
    trusted = request.app[TRUSTED_KEY]
    peer = request.remote or "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return peer


def _is_trusted(address: str, trusted: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _locked(seconds: float) -> web.Response:
    AUTH_FAILURES.labels("locked-out").inc()
    return _too_many(seconds)


def _too_many(seconds: float) -> web.Response:
    return error(
        429,
        "too-many-auth-failures",
        "Too many failed authentication attempts",
        {"Retry-After": str(int(seconds) + 1)},
    )


def _attempt(
    request: web.Request, client: str, auth: BasicAuth | None, verified: str | None = None
) -> tuple[str | None, bool]:
    """(the key a failure of this attempt counts against, whether the client is one of our
    proxies' own addresses). ``verified``: the login of a header already found valid (a
    configured name, so known)."""
    trusted = request.app[TRUSTED_KEY]
    is_proxy = bool(trusted) and _is_trusted(client, trusted)
    if verified is not None:
        return attempt_key(client, verified, True, is_proxy), is_proxy
    login = auth.login if auth is not None else None
    known = login is not None and request.app[CREDENTIALS_KEY].knows(login.encode("utf-8"))
    return attempt_key(client, login, known, is_proxy), is_proxy


def _warn_proxy(request: web.Request, client: str, counted: bool) -> None:
    """A failure whose client is a proxy's own address: a misconfiguration, logged at most
    once a minute. ``counted``: it still counted against its (address, login) pair."""
    if not counted:
        PROXY_LOCKOUTS_REFUSED.inc()
    warned = request.app[PROXY_WARNED_KEY]
    now = time.monotonic()
    if now - warned[0] >= PROXY_WARNING_SECONDS:
        warned[0] = now
        log.warning(
            "failed login not counted against trusted proxy: its X-Forwarded-For names no "
            "client outside httpreceiver.trusted-proxies, and locking the proxy's address out "
            "would lock out every client behind it. Either trusted-proxies is too wide (it "
            "includes the clients' addresses, e.g. an ingress that SNATs clients into the pod "
            "network) or the proxy sets no X-Forwarded-For; failures still count per "
            "(address, login name) pair",
            extra={"client": client, "x_forwarded_for": request.headers.get("X-Forwarded-For")},
        )


def _basic(header: str | None) -> BasicAuth | None:
    if not header:
        return None
    try:
        return BasicAuth.decode(header, encoding="utf-8")
    except ValueError:
        return None


def _check(request: web.Request, auth: BasicAuth) -> bool:
    credentials = request.app[CREDENTIALS_KEY]
    return credentials.check(auth.login.encode("utf-8"), auth.password.encode("utf-8"))


async def authenticate(request: web.Request) -> tuple[web.Response | None, str | None]:
    """(None, the login) when the request carries valid credentials, else (the response to
    send, None).

    A header value once found valid is remembered with its login, so that the next request
    with it (every request of a client) skips decoding and hashing; the throttle is still
    asked first on each, exactly as for a new value. A remembered value answers a few
    microseconds sooner, which tells a client only that a header it already holds is valid."""
    header = request.headers.get("Authorization")
    if not header:
        AUTH_FAILURES.labels("missing").inc()
        return unauthorized("Authentication required (HTTP Basic)"), None
    throttle = request.app[THROTTLE_KEY]
    client = client_address(request)
    verified = request.app[VERIFIED_KEY]
    login = verified.get(header)
    auth = None if login is not None else _basic(header)
    key, is_proxy = _attempt(request, client, auth, login)
    locked = throttle.locked_for(key)
    if locked > 0:
        return _locked(locked), None
    delay = throttle.delay_for(key)
    if delay > 0:
        await asyncio.sleep(delay)
        # Others may have failed while we waited: look again, then check and record the
        # result without awaiting, so at most max-failures passwords are ever tried.
        locked = throttle.locked_for(key)
        if locked > 0:
            return _locked(locked), None
    if login is not None:
        return None, login
    if auth is not None and _check(request, auth):
        if len(verified) >= MAX_VERIFIED:
            verified.clear()
        verified[header] = auth.login
        return None, auth.login
    hidden = throttle.failure(key, client, is_proxy)
    AUTH_FAILURES.labels("bad-credentials").inc()
    log.warning("authentication failed", extra={"client": client})
    if is_proxy:
        _warn_proxy(request, client, counted=key is not None)
    if hidden > 0:
        return _too_many(hidden), None  # counted as bad-credentials above
    return unauthorized("Invalid credentials"), None


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it passes ``limit``, chunked or not, so a huge
    upload is never held in memory.

    The pieces are taken as aiohttp holds them (``readany``: no re-slicing into fixed
    chunks) and joined once at the end: one copy of the body, where growing a buffer and
    converting it to bytes copied it two or three times (bench/ingest.py, 500 KB)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    pieces: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        pieces.append(chunk)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response``, then close at once: aiohttp would otherwise keep reading the rest
    of an unread body ("lingering", up to 10 s) from a client that is already too slow."""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport sends what it holds, then closes
    return response


async def send(request: web.Request) -> web.Response:
    refusal, login = await authenticate(request)
    if refusal is not None:
        return refusal
    intake = request.app[INTAKE_KEY]
    # aiohttp reports a missing Content-Type as application/octet-stream; we want it said.
    if "Content-Type" not in request.headers or request.content_type not in ACCEPTED_TYPES:
        DROPPED.labels("bad-headers").inc()
        return error(
            415,
            "unsupported-media-type",
            f"Content-Type must be one of {', '.join(ACCEPTED_TYPES)}, "
            f"got {request.headers.get('Content-Type', 'none')}",
        )
    try:
        idempotency_key = parse_idempotency_key(request.headers.getall("Idempotency-Key", []))
    except MessageRejected as exc:
        DROPPED.labels(exc.reason).inc()
        return error(exc.http_status, exc.reason, exc.text)
    try:
        # aiohttp bounds the header section (keepalive_timeout, see service.py) but not the
        # body: without this a client sending a byte a minute holds its connection for ever.
        async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
            data = await read_body(request, intake.max_size)
    except MessageRejected as exc:
        DROPPED.labels(exc.reason).inc()
        return error(exc.http_status, exc.reason, exc.text)
    except TimeoutError:
        DROPPED.labels("timeout").inc()
        return await answer_and_close(
            request,
            error(
                408,
                "request-timeout",
                f"The body took longer than {request.app[BODY_TIMEOUT_KEY]:g} seconds",
                {"Connection": "close"},
            ),
        )
    try:
        submitted = await intake.accept(
            data, source="http", idempotency_key=idempotency_key, login=login
        )
    except MessageRejected as exc:
        return error(exc.http_status, exc.reason, exc.text)
    except TemporarilyUnavailable as exc:
        return error(503, exc.reason, exc.text, {"Retry-After": str(RETRY_AFTER_SECONDS)})
    return web.json_response(answer(submitted, idempotency_key is not None))


def answer(submitted: Submitted, by_idempotency_key: bool) -> dict[str, object]:
    """The 200 body: a duplicate gets the first answer again, marked (and counted)."""
    body: dict[str, object] = {"uuid": submitted.accepted.uuid, "queue": submitted.queue.name}
    if submitted.duplicate:
        DUPLICATES.labels("idempotency-key" if by_idempotency_key else "x-uuid").inc()
        body["duplicate"] = True
    return body


def make_app(
    intake: Intake,
    credentials: Credentials,
    throttle: LoginThrottle,
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = (),
    body_timeout: float = 60.0,
) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[INTAKE_KEY] = intake
    app[BODY_TIMEOUT_KEY] = body_timeout
    app[TRUSTED_KEY] = trusted_proxies
    app[PROXY_WARNED_KEY] = [-PROXY_WARNING_SECONDS]
    app[CREDENTIALS_KEY] = credentials
    app[THROTTLE_KEY] = throttle
    app[VERIFIED_KEY] = {}
    app.router.add_post("/v1/mail/send", send)
    return app
