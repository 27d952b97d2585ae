"""The format of one queue item: a JSON header line, a newline, then the payload bytes.

    {"v":1,"id":"…","uuid":"…","priority":1,"enqueued_at":1764290000123,"attempts":0,…}\\n
    <payload: the customer's message exactly as received, or an event's JSON>

Why this shape: the payload stays byte-for-byte what the customer sent (no base64, no copy
into a container format), metadata can be read without touching the payload, and the queue's
Lua scripts can rewrite the header (``attempts``, ``dead``) with Redis' built-in ``cjson``
without understanding the payload. The header is JSON without newlines (we write it as
ASCII with ``json.dumps``, which escapes them; a script rewriting it may emit UTF-8, which
``decode`` reads equally), so the first ``\\n`` always ends it. ``encode`` refuses values the
scripts could not rewrite faithfully (empty lists, integers beyond 14 digits, floats).

Header keys:

``v``            format version (1)
``id``           random id of this queue item (logs, dead-letter listings)
``uuid``         the customer's X-Uuid (messages, and events that have one)
``stream_id``    the customer's X-Stream-Id, when present
``priority``     0 (high, P0) or 1 (default, P1)
``enqueued_at``  when it was first queued, Unix milliseconds
``attempts``     deliveries that failed so far (the queue's delivery counter)
``rcpts``        recipients as the receiver determined them (To and Cc)
``source``       who produced it (``smtp``, ``http``, or a service name for events)
``dead``         only on dead letters: ``{"reason", "at", "queue"}``
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1


class ItemFormatError(ValueError):
    """Bytes that are not a queue item (no header line, or a header that is not JSON)."""


@dataclass(frozen=True, slots=True)
class Item:
    """A decoded queue item. ``raw`` is the exact bytes in Redis (needed to ack it)."""

    header: dict[str, Any]
    payload: bytes
    raw: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return str(self.header.get("id", ""))

    @property
    def uuid(self) -> str | None:
        value = self.header.get("uuid")
        return str(value) if value is not None else None

    @property
    def stream_id(self) -> str | None:
        value = self.header.get("stream_id")
        return str(value) if value is not None else None

    @property
    def attempts(self) -> int:
        return int(self.header.get("attempts", 0))

    @property
    def dead_reason(self) -> str | None:
        dead = self.header.get("dead")
        return str(dead.get("reason")) if isinstance(dead, dict) else None


def new_item_id() -> str:
    return os.urandom(10).hex()


def now_ms() -> int:
    return int(time.time() * 1000)


#: Lua's cjson prints numbers with 14 significant digits; larger integers would be rounded
#: when a script rewrites the header.
MAX_HEADER_INT = 10**14


def _check_value(key: str, value: Any) -> None:
    """Only what survives a rewrite by the queue's Lua scripts unchanged."""
    if isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) >= MAX_HEADER_INT:
            raise ValueError(f"item header {key}: integer too large for cjson")
        return
    if isinstance(value, list):
        if not value:  # cjson cannot tell an empty array from an empty object
            raise ValueError(f"item header {key}: empty list")
        for element in value:
            _check_value(key, element)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_value(f"{key}.{k}", v)
        return
    raise ValueError(f"item header {key}: unsupported type {type(value).__name__}")


def encode(header: dict[str, Any], payload: bytes) -> bytes:
    """Header + newline + payload. ``None`` values and empty lists are left out (Lua's cjson
    would turn them into its ``null`` sentinel and an empty object)."""
    clean = {k: v for k, v in header.items() if v is not None and v != []}
    for key, value in clean.items():
        _check_value(key, value)
    line = json.dumps(clean, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return line + b"\n" + payload


def new_item(
    payload: bytes,
    *,
    source: str,
    uuid: str | None = None,
    stream_id: str | None = None,
    priority: int | None = None,
    rcpts: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    header: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "id": new_item_id(),
        "uuid": uuid,
        "stream_id": stream_id,
        "priority": priority,
        "enqueued_at": now_ms(),
        "attempts": 0,
        "rcpts": rcpts or None,
        "source": source,
    }
    if extra:
        header.update(extra)
    return encode(header, payload)


def decode(raw: bytes) -> Item:
    newline = raw.find(b"\n")
    if newline < 0:
        raise ItemFormatError("queue item has no header line")
    try:
        header = json.loads(raw[:newline])
    except ValueError as exc:
        raise ItemFormatError(f"queue item header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ItemFormatError("queue item header is not a JSON object")
    # Lua's cjson encodes an empty array as {}; normalise so callers see a list.
    if header.get("rcpts") == {}:
        header["rcpts"] = []
    return Item(header=header, payload=raw[newline + 1 :], raw=raw)


def decode_stored(raw: bytes | str) -> Item:
    """An item as read from Redis; bytes that are not an item come back marked ``corrupt``
    (the scripts dead-letter such bytes rather than lose them)."""
    if isinstance(raw, str):  # only with decode_responses=True, which we never use
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        return decode(raw)
    except ItemFormatError:
        return Item(header={"corrupt": True}, payload=raw, raw=raw)
