"""One-click unsubscribe tokens (RFC 8058).

The Transformer puts ``{{unsubscribe-token}}`` into List-Unsubscribe, one token per
recipient (every copy has its own headers); HttpReceiver's public route
``/v1/unsubscribe/<token>`` turns a valid token into an ``unsubscribe`` event for that
recipient, with its suppression entry. A token carries an HMAC-SHA256 over what it names,
with a secret only our services know, so it can be neither forged nor guessed, nor turned
into one for another recipient; it is URL-safe without escaping (RFC 4648 §5 base64url, no
padding): ``<base64url(payload)>.<base64url(hmac)[:32]>``.

The payload of a token minted today (label ``_RCPT_LABEL``) is binary, to keep the URL short
(about 100 characters for an RFC 4122 X-Uuid and a short address):

    issued (u32 BE, Unix seconds) | uuid | stream id | From domain | recipient (the rest)

where uuid is one octet 0 and the 16 octets of an RFC 4122 UUID in its canonical text form,
or its length (1-36) and its ASCII; stream id and From domain are a length octet (0: none)
and their bytes; the recipient is ``feedbacktag.normalize_address``'s form in UTF-8. The
recipient is in the clear: the link goes only to that mailbox, whose address is in the
message's To anyway, and HttpReceiver needs it to write the suppression entry (a keyed
fingerprint would need a Redis record per recipient to map it back).

``issued`` is inside the MAC, so HttpReceiver can refuse old links (410) and an altered time
fails the MAC (404). Two older kinds are still read, never minted: per message, with an issue
time (``<issued>:<uuid>[:<stream id>]`` under ``_LABEL``) and from before issue times
(``<uuid>[:<stream id>]`` under ``_UNTIMED_LABEL``, ``issued=None``). Each kind has its own
label in the MAC, so no kind can pass for another.

32 base64 characters keep 192 bits of the MAC: far beyond guessing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid as uuid_module
from typing import NamedTuple

from . import keyspace
from .feedbacktag import normalize_address
from .message import STREAM_ID_RE, UUID_RE

MAC_CHARS = 32
#: The MAC is over a label plus the payload, so the same secret could sign other things
#: later without a token for one being valid for another. Tokens per recipient:
_RCPT_LABEL = b"manycore-unsubscribe-rcpt:"
#: Per message, with an issue time (still accepted until they expire; no longer minted).
_LABEL = b"manycore-unsubscribe-issued:"
#: Per message, minted before issue times existed (still accepted; never minted any more).
_UNTIMED_LABEL = b"manycore-unsubscribe:"
#: Enough decimal digits for any Unix time of the next thousands of years.
_MAX_TIME_DIGITS = 12
#: Longest encoded payload read: a 320-octet address with the longest ids fits.
_MAX_ENCODED = 700


class Token(NamedTuple):
    uuid: str
    stream_id: str | None
    #: Unix seconds the token was minted; None for a token from before issue times.
    issued: int | None
    #: The recipient (normalised) and the From domain; None for a per-message token.
    rcpt: str | None = None
    domain: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, label: bytes, payload: bytes) -> str:
    return _b64(hmac.new(secret, label + payload, hashlib.sha256).digest())[:MAC_CHARS]


def _field(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError("a token field is at most 255 octets")
    return bytes((len(raw),)) + raw


def _uuid_field(uuid: str) -> bytes:
    if len(uuid) == 36:
        try:
            packed = uuid_module.UUID(uuid)
        except ValueError:
            packed = None
        if packed is not None and str(packed) == uuid:
            return b"\0" + packed.bytes
    return _field(uuid)


def make_token(
    secret: bytes,
    uuid: str,
    stream_id: str | None = None,
    issued: int | None = None,
    *,
    rcpt: str,
    domain: str,
) -> str:
    """The token of ``rcpt``'s copy of the message sent from ``domain`` (its From domain),
    issued at ``issued`` (Unix seconds; default now)."""
    when = int(time.time()) if issued is None else issued
    raw = b"".join(
        (
            when.to_bytes(4, "big"),
            _uuid_field(uuid),
            _field(stream_id or ""),
            _field(domain.lower()),
            normalize_address(rcpt).encode("utf-8"),
        )
    )
    return f"{_b64(raw)}.{_mac(secret, _RCPT_LABEL, raw)}"


def make_message_token(
    secret: bytes, uuid: str, stream_id: str | None = None, issued: int | None = None
) -> str:
    """A per-message token with an issue time, as minted before tokens named the recipient
    (no longer minted by the Transformer; kept for tests and tools)."""
    when = int(time.time()) if issued is None else issued
    raw = (f"{when}:{uuid}" if not stream_id else f"{when}:{uuid}:{stream_id}").encode("ascii")
    return f"{_b64(raw)}.{_mac(secret, _LABEL, raw)}"


def _take(raw: bytes, pos: int) -> tuple[str, int]:
    """One length-prefixed field at ``pos``: (text, next position); ValueError if short."""
    end = pos + 1 + raw[pos]
    if end > len(raw):
        raise ValueError("short field")
    return raw[pos + 1 : end].decode("utf-8"), end


def _read_rcpt_payload(raw: bytes) -> Token | None:
    try:
        issued = int.from_bytes(raw[:4], "big")
        if raw[4] == 0:
            uuid, pos = str(uuid_module.UUID(bytes=raw[5:21])), 21
        else:
            uuid, pos = _take(raw, 4)
        stream_id, pos = _take(raw, pos)
        domain, pos = _take(raw, pos)
        rcpt = raw[pos:].decode("utf-8")
    except (IndexError, ValueError):
        return None
    if not UUID_RE.fullmatch(uuid) or (stream_id and not STREAM_ID_RE.fullmatch(stream_id)):
        return None
    if not domain or "@" not in rcpt:
        return None
    return Token(uuid, stream_id or None, issued, rcpt, domain)


def _read_message_payload(raw: bytes, timed: bool) -> Token | None:
    text = raw.decode("ascii", "replace")
    issued: int | None = None
    if timed:
        stamp, _, text = text.partition(":")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_TIME_DIGITS):
            return None
        issued = int(stamp)
    uuid, _, stream_id = text.partition(":")
    if not UUID_RE.fullmatch(uuid) or (stream_id and not STREAM_ID_RE.fullmatch(stream_id)):
        return None
    return Token(uuid, stream_id or None, issued)


def read_token(secret: bytes, token: str) -> Token | None:
    """The token's contents if it is genuine (any kind), None for anything else."""
    encoded, dot, mac = token.partition(".")
    if not dot or len(mac) != MAC_CHARS or len(encoded) > _MAX_ENCODED:
        return None
    try:
        raw = _unb64(encoded)
    except (binascii.Error, ValueError):
        return None
    given = mac.encode()
    if hmac.compare_digest(given, _mac(secret, _RCPT_LABEL, raw).encode()):
        return _read_rcpt_payload(raw)
    if hmac.compare_digest(given, _mac(secret, _LABEL, raw).encode()):
        return _read_message_payload(raw, timed=True)
    if hmac.compare_digest(given, _mac(secret, _UNTIMED_LABEL, raw).encode()):
        return _read_message_payload(raw, timed=False)
    return None


def parse_token(secret: bytes, token: str) -> tuple[str, str | None] | None:
    """(uuid, stream id) for a genuine token of any kind, None for anything else."""
    found = read_token(secret, token)
    return None if found is None else (found.uuid, found.stream_id)


def once_marker(uuid: str, rcpt: str | None = None) -> str:
    """The once-marker of an unsubscribe from ``uuid``: per recipient when it is known, so one
    recipient's unsubscribe never swallows another's; per message for the tokens that name no
    recipient. HttpReceiver sets it with the one-click event, MxServer with a mailto one (so
    the mailto and the provider's POST for one person give one event). The recipient is
    hashed without a key (MxServer holds no unsubscribe secret) after normalising; the
    suppression list holds the addresses themselves anyway."""
    if rcpt is None:
        return keyspace.current().once("unsubscribe", uuid)
    digest = hashlib.sha256(normalize_address(rcpt).encode("utf-8", "surrogatepass"))
    return keyspace.current().once("unsubscribe", uuid, "r" + digest.hexdigest()[:16])
