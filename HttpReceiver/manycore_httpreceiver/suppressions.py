"""The suppression list's API, behind the same Basic auth as ``/v1/mail/send``:

``GET /v1/suppressions/{address}[?domain=]``
    The address's live entries (every sending domain, or one); 404 when it has none.
``GET /v1/suppressions?domain=&reason=&cursor=&limit=``
    One page of a domain's entries and the ``cursor`` of the next (null at the end).
``POST /v1/suppressions``
    Bulk import: ``{"domain": d, "reason": r, "entries": [{"address": a, "domain"?: d,
    "reason"?: r}, ...]}``, at most ``MAX_IMPORT`` entries; reason ``manual`` by default.
``DELETE /v1/suppressions/{address}[?domain=]``
    Removes the address's entries (every domain, or one); 404 when it had none.

Errors are JSON ``{"error", "reason"}`` like the rest of the API (app.py), each counted in
``httpreceiver_suppression_api_errors_total`` by reason. An import body is read within
``httpreceiver.request-timeout-seconds`` (408 ``request-timeout`` after it, and the
connection closed) and up to ``MAX_BODY`` bytes (413 ``too-large`` as soon as it passes, from
Content-Length or while reading). Whatever JSON arrives gets a 400 naming what is wrong,
never a 500: not JSON (or not UTF-8, or a number too long to read), nested deeper than
Python's parser goes, or a value of the wrong type where a string is expected.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from manycore_common import suppression as s
from manycore_common.config import SuppressionSettings
from manycore_common.message import STREAM_ID_RE, MessageRejected
from manycore_common.suppressionmetrics import IMPORTED
from manycore_common.suppressionstore import Op, SuppressionStore

from .app import (
    BODY_TIMEOUT_KEY,
    RETRY_AFTER_SECONDS,
    answer_and_close,
    authenticate,
    error,
    read_body,
)
from .metrics import API_ERRORS

MAX_IMPORT = 10_000
#: 10,000 entries of a long address each, with room to spare.
MAX_BODY = 4 * 1024 * 1024
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000


class ApiError(Exception):
    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status, self.reason, self.text = status, reason, text


def _bad(text: str) -> ApiError:
    return ApiError(400, "bad-request", text)


class SuppressionApi:
    def __init__(self, store: SuppressionStore, settings: SuppressionSettings) -> None:
        self.store = store
        self.settings = settings

    async def guarded(self, request: web.Request, action: Any) -> web.Response:
        refusal, _ = await authenticate(request)
        if refusal is not None:
            return refusal
        try:
            return web.json_response(await action(request))
        except ApiError as exc:
            API_ERRORS.labels(exc.reason).inc()
            return error(exc.status, exc.reason, exc.text)
        except MessageRejected:
            API_ERRORS.labels("too-large").inc()
            text = f"the body must be at most {MAX_BODY} bytes"
            return await answer_and_close(request, error(413, "too-large", text))
        except TimeoutError:
            API_ERRORS.labels("request-timeout").inc()
            seconds = request.app[BODY_TIMEOUT_KEY]
            text = f"the body took longer than {seconds:g} seconds"
            headers = {"Connection": "close"}
            return await answer_and_close(request, error(408, "request-timeout", text, headers))
        except (RedisError, OSError):
            API_ERRORS.labels("unavailable").inc()
            text = "the suppression list is not reachable now"
            return error(503, "unavailable", text, {"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def scopes(self, request: web.Request) -> list[str]:
        """The lists a request is about: ``?domain=`` (with its stream lists), or all."""
        known = list(await self.store.scopes())
        domain = request.query.get("domain")
        if domain is None:
            return known
        name = _domain(domain)
        return [name, *(k for k in known if k.startswith(f"{name}#"))]

    async def get_one(self, request: web.Request) -> dict[str, Any]:
        address = _address(request.match_info["address"])
        entries = await self.store.get(await self.scopes(request), address, time.time())
        if not entries:
            raise ApiError(404, "not-found", f"{address} is not on the suppression list")
        return {"address": address, "entries": entries}

    async def list_page(self, request: web.Request) -> dict[str, Any]:
        query = request.query
        if "domain" not in query:
            raise _bad("domain is required (the sending domain whose list to read)")
        scope = _domain(query["domain"])
        stream = query.get("streamid")
        if stream is not None and not STREAM_ID_RE.fullmatch(stream):
            raise _bad("streamid must be an X-Stream-Id (letters, digits, '.', '_', '-')")
        reason = query.get("reason")
        if reason is not None and reason not in s.REASONS:
            raise _bad(f"reason must be one of {', '.join(s.REASONS)}")
        try:
            cursor = s.decode_cursor(query.get("cursor"))
            limit = int(query.get("limit", DEFAULT_PAGE))
        except (s.BadAddress, ValueError) as exc:
            raise _bad(str(exc) or "limit must be a number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise _bad(f"limit must be 1 to {MAX_PAGE}")
        entries, following = await self.store.page(
            s.scope_of(scope, stream),
            cursor,
            limit,
            time.time(),
            reason,
        )
        return {"entries": entries, "cursor": None if following is None else f"{following:04x}"}

    async def bulk_import(self, request: web.Request) -> dict[str, Any]:
        # aiohttp bounds the header section, not the body (see app.send).
        async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
            raw = await read_body(request, MAX_BODY)
        ops = import_ops(parse_json(raw), self.settings, time.time())
        added = await self.store.add_entries(ops)
        IMPORTED.labels("import").inc(len(ops))
        return {"received": len(ops), "added": added, "updated": len(ops) - added}

    async def delete_one(self, request: web.Request) -> dict[str, Any]:
        address = _address(request.match_info["address"])
        deleted = await self.store.delete(
            [(scope, address) for scope in await self.scopes(request)]
        )
        if not deleted:
            raise ApiError(404, "not-found", f"{address} is not on the suppression list")
        IMPORTED.labels("delete").inc(deleted)
        return {"address": address, "deleted": deleted}


def parse_json(raw: bytes) -> Any:
    """The body as JSON (pure); ApiError 400 saying why it is not."""
    try:
        return json.loads(raw)
    except RecursionError:
        # json's C parser stops at the interpreter's recursion limit (about 1,000 levels).
        raise _bad("the body is nested too deeply (an import has at most 3 levels)") from None
    except UnicodeDecodeError:
        raise _bad("the body must be UTF-8 JSON") from None
    except ValueError as exc:
        # JSONDecodeError, or an integer of more than 4,300 digits (int_max_str_digits).
        raise _bad(f"the body must be JSON: {str(exc)[:200]}") from None


def _string(item: dict[str, Any], key: str, where: str, default: Any = None) -> Any:
    """``item[key]`` (or ``default``), which must be a string when there is one."""
    value = item.get(key, default)
    if value is not None and not isinstance(value, str):
        kind = _JSON_TYPES.get(type(value), "number")
        raise _bad(f"{where}{key} must be a string, not {kind}")
    return value


_JSON_TYPES = {dict: "an object", list: "an array", bool: "true or false"}


def import_ops(body: Any, settings: SuppressionSettings, now: float) -> list[Op]:
    """The entries of an import body (pure); ApiError naming the first bad one."""
    if isinstance(body, list):
        body = {"entries": body}
    if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
        raise _bad('the body must be {"entries": [...]} or a list of entries')
    entries = body["entries"]
    if len(entries) > MAX_IMPORT:
        raise ApiError(413, "too-many-entries", f"at most {MAX_IMPORT} entries per request")
    default_domain = _string(body, "domain", "")
    default_reason = _string(body, "reason", "", "manual")
    ops = []
    for n, raw in enumerate(entries):
        item = {"address": raw} if isinstance(raw, str) else raw
        if not isinstance(item, dict):
            raise _bad(f"entries[{n}]: an address (string) or an object with one")
        if _string(item, "address", f"entries[{n}].") is None:
            raise _bad(f"entries[{n}]: address is required")
        domain = _string(item, "domain", f"entries[{n}].", default_domain)
        reason = _string(item, "reason", f"entries[{n}].", default_reason)
        if domain is None:
            raise _bad(f"entries[{n}]: domain is required (here or for the whole body)")
        if reason not in s.REASONS:
            raise _bad(f"entries[{n}]: reason must be one of {', '.join(s.REASONS)}")
        try:
            address, scope = s.normalize(item["address"]), s.normalize_domain(domain)
        except s.BadAddress as exc:
            raise _bad(f"entries[{n}]: {exc}") from None
        days = settings.expiry_days.days(reason)
        ops.append(Op(scope, address, s.new_entry(reason, now, days)))
    return ops


def _domain(value: str) -> str:
    try:
        return s.normalize_domain(value)
    except s.BadAddress as exc:
        raise _bad(str(exc)) from None


def _address(value: str) -> str:
    try:
        return s.normalize(value)
    except s.BadAddress as exc:
        raise _bad(str(exc)) from None


def install(app: web.Application, redis: Redis, settings: SuppressionSettings) -> None:
    add_routes(app, SuppressionApi(SuppressionStore(redis), settings))


def add_routes(app: web.Application, api: SuppressionApi) -> None:
    async def get_one(request: web.Request) -> web.Response:
        return await api.guarded(request, api.get_one)

    async def list_page(request: web.Request) -> web.Response:
        return await api.guarded(request, api.list_page)

    async def bulk_import(request: web.Request) -> web.Response:
        return await api.guarded(request, api.bulk_import)

    async def delete_one(request: web.Request) -> web.Response:
        return await api.guarded(request, api.delete_one)

    app.router.add_get("/v1/suppressions", list_page)
    app.router.add_post("/v1/suppressions", bulk_import)
    app.router.add_get("/v1/suppressions/{address}", get_one)
    app.router.add_delete("/v1/suppressions/{address}", delete_one)
