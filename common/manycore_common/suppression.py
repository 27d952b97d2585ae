"""The suppression list: recipients we must not mail again from a sending domain (pure part).

Why: mailbox providers judge a sender by its mail to dead addresses and by mail people did not
want; an address that hard-bounced, complained or unsubscribed is not mailed again from the
same sending domain (the From domain) until its entry expires or is deleted.

Layout (compact: one field per entry in a small hash, so Redis keeps it as a listpack; names
built by ``manycore_common.keyspace``, behind ``reliable-queue.key-prefix`` when one is set):

``supp:<scope>:<bucket>`` (HASH)  address → packed entry
    ``scope`` is the sending domain, or ``<domain>#<stream id>`` for an unsubscribe scoped to
    a stream; ``bucket`` is four hex digits of SHA-1(address): 65,536 buckets per scope, so a
    scope of 8 M entries still has under 128 per hash (``hash-max-listpack-entries``).
``supp:size`` (HASH) scope → entries: the gauge reads this counter, never a scan.
``supp:soft:<scope>:<bucket>:<address>`` (STRING, expires after the window)
    soft bounces counted towards ``soft-bounce-threshold``.

A packed entry: reason (1 octet) | first seen (u32 BE) | last seen (u32 BE) | expires (u32 BE,
``NEVER`` for never) | source event id (8 octets: the first half of the event's 32 hex digits,
enough to find it in the customer's webhook log) | uuid: 16 octets for a UUID in its
canonical text form, else its text in printable ASCII. The two cannot be confused: a packed
UUID is stored only when one of its octets is outside printable ASCII (every RFC 4122 one:
its variant octet is 0x80-0xBF), and any other id, 16 characters long included, is text.
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid as uuid_module
from dataclasses import dataclass
from typing import Literal

from . import keyspace
from .feedbacktag import normalize_address

Reason = Literal[
    "hard-bounce", "unroutable", "spam-report", "unsubscribe", "soft-bounce-repeated", "manual"
]
REASONS: tuple[Reason, ...] = Reason.__args__  # type: ignore[attr-defined]
_CODE: dict[Reason, bytes] = {
    "hard-bounce": b"h",
    "unroutable": b"r",
    "spam-report": b"s",
    "unsubscribe": b"u",
    "soft-bounce-repeated": b"b",
    "manual": b"m",
}
_REASON: dict[bytes, Reason] = {v: k for k, v in _CODE.items()}

#: Expiry of an entry that never expires (u32 max, so "later expiry wins" is one compare).
NEVER = 0xFFFFFFFF
BUCKETS = 1 << 16
#: Bounce categories that say the address (or its domain) does not exist: only those
#: suppress. A policy or spam block is about the message or the sender, not the address.
SUPPRESSING_CATEGORIES: dict[str, Reason] = {
    "invalid-recipient": "hard-bounce",
    "mailbox-unavailable": "hard-bounce",
    "dns": "unroutable",
}
_HEAD = struct.Struct(">cIII8s")
_HEX_ID = re.compile(r"[0-9a-f]{16,}")
_DOMAIN = re.compile(r"[a-z0-9.-]{1,253}")


class BadAddress(ValueError):
    """An address or domain the list cannot hold."""


@dataclass(frozen=True, slots=True)
class Entry:
    reason: Reason
    first: int
    last: int
    #: Unix seconds, or ``NEVER``.
    expires: int
    #: 16 hex digits of the event that caused it ('' for an import).
    source: str
    uuid: str

    def active(self, now: float) -> bool:
        return self.expires == NEVER or self.expires > now

    def as_json(self, address: str, scope: str) -> dict[str, object]:
        domain, _, stream = scope.partition("#")
        return {
            "address": address,
            "domain": domain,
            "streamid": stream or None,
            "reason": self.reason,
            "first": self.first,
            "last": self.last,
            "expires": None if self.expires == NEVER else self.expires,
            "source": self.source or None,
            "uuid": self.uuid or None,
        }


def normalize_domain(domain: str) -> str:
    """A sending domain as the list keys it: lower case, IDNA; BadAddress if it is not one."""
    name = normalize_address(f"x@{domain}").partition("@")[2]
    if not _DOMAIN.fullmatch(name) or "." not in name:
        raise BadAddress(f"not a domain name: {domain[:100]!r}")
    return name


def normalize(address: str) -> str:
    """A recipient as the list keys it (``feedbacktag.normalize_address``); BadAddress for
    anything that is not local@domain."""
    return checked(normalize_address(address), address)


def checked(norm: str, address: str) -> str:
    """``norm``, the normalised form of ``address``, if the list can hold it; else
    BadAddress. For a caller that normalised already (the Transformer's check, per message)."""
    local, at, domain = norm.rpartition("@")
    if not at or not local or len(norm) > 320 or not _DOMAIN.fullmatch(domain):
        raise BadAddress(f"not an address: {address[:100]!r}")
    if not norm.isascii():
        try:
            norm.encode("utf-8")  # a lone surrogate (JSON "\ud800") has no UTF-8 form
        except UnicodeEncodeError:
            raise BadAddress(f"not an address: {address[:100]!r}") from None
    return norm


def scope_of(domain: str, stream_id: str | None = None) -> str:
    return f"{domain}#{stream_id}" if stream_id else domain


def size_key() -> str:
    return keyspace.current().suppression_size()


def bucket_of(address: str) -> int:
    """Which of a scope's ``BUCKETS`` hashes holds ``address`` (already normalised)."""
    digest = hashlib.sha1(address.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:2], "big")


def bucket_key(scope: str, address: str) -> str:
    """The hash that holds ``address`` (already normalised) under ``scope``."""
    return bucket_name(scope, bucket_of(address))


def bucket_name(scope: str, index: int) -> str:
    return keyspace.current().suppression_bucket(scope, index)


def soft_key(scope: str, address: str) -> str:
    return keyspace.current().suppression_soft(scope, bucket_of(address), address)


def _printable(raw: bytes) -> bool:
    return all(0x20 <= octet <= 0x7E for octet in raw)


def _uuid_bytes(value: str) -> bytes:
    """The stored form of an X-Uuid (see the module docstring). Only an exact canonical UUID
    is packed, so reading it back gives the same text (not an upper-case or brace form)."""
    if len(value) == 36:
        try:
            packed = uuid_module.UUID(value).bytes
        except ValueError:
            packed = b""
        if packed and str(uuid_module.UUID(bytes=packed)) == value and not _printable(packed):
            return packed
    text = value.encode("ascii", "replace")
    # Control characters become "?" as non-ASCII ones do: text stays printable, which is what
    # tells it from a packed UUID.
    return bytes(o if 0x20 <= o <= 0x7E else 0x3F for o in text)


def _uuid_text(raw: bytes) -> str:
    """Entries stored before this rule read the same, and better: an old 16-character id was
    stored as its text too, and is read as text now instead of as a garbled UUID."""
    if len(raw) == 16 and not _printable(raw):
        return str(uuid_module.UUID(bytes=raw))
    return raw.decode("ascii", "replace")


def pack(entry: Entry) -> bytes:
    source = entry.source[:16] if _HEX_ID.fullmatch(entry.source[:16] or "-") else ""
    head = _HEAD.pack(
        _CODE[entry.reason],
        entry.first,
        entry.last,
        entry.expires,
        bytes.fromhex(source) if source else b"\0" * 8,
    )
    return head + _uuid_bytes(entry.uuid)


def unpack(raw: bytes) -> Entry:
    code, first, last, expires, source = _HEAD.unpack_from(raw)
    return Entry(
        reason=_REASON.get(code, "manual"),
        first=first,
        last=last,
        expires=expires,
        source="" if source == b"\0" * 8 else source.hex(),
        uuid=_uuid_text(raw[_HEAD.size :]),
    )


def expiry(now: float, days: int) -> int:
    """When an entry made ``now`` expires: ``days`` 0 is never."""
    return NEVER if days <= 0 else min(NEVER - 1, int(now) + days * 86400)


def new_entry(reason: Reason, now: float, days: int, source: str = "", uuid: str = "") -> Entry:
    return Entry(reason, int(now), int(now), expiry(now, days), source, uuid)


def bounce_reason(bounce_type: str, category: str | None) -> Reason | None:
    """Which reason a bounce suppresses with, or None (soft, or a category that says nothing
    about the address). Soft bounces count towards the repeated-soft threshold instead."""
    if bounce_type not in ("hard", "unroutable") or category is None:
        return None
    return SUPPRESSING_CATEGORIES.get(category)


def decode_cursor(cursor: str | None) -> int:
    """The bucket a listing resumes at; BadAddress for a cursor we did not give out."""
    if not cursor:
        return 0
    try:
        index = int(cursor, 16)
    except ValueError:
        raise BadAddress("cursor must be one returned by a previous page") from None
    if not 0 <= index < BUCKETS:
        raise BadAddress("cursor must be one returned by a previous page")
    return index
