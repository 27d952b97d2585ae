"""One-click unsubscribe tokens (RFC 8058).

The Transformer puts ``{{unsubscribe-token}}`` into List-Unsubscribe; HttpReceiver's public
route ``/v1/unsubscribe/<token>`` turns a valid token into an ``unsubscribe`` event. A token
names the message (uuid, and stream id when it had one) and carries an HMAC-SHA256 over
them with a secret only our services know, so it can be neither forged nor guessed, and it
is URL-safe without escaping (RFC 4648 §5 base64url, no padding).

    <base64url(issued ":" uuid[":" stream-id])>.<base64url(hmac)[:32]>

``issued`` is the Unix time (decimal seconds) the Transformer minted it, inside the MAC, so
HttpReceiver can refuse old links (410) and an altered time fails the MAC (404). Tokens
minted before issue times existed (``<base64url(uuid[":" stream-id])>``, already in inboxes)
carry a MAC under another label, so neither kind can pass for the other; ``read_token``
gives them ``issued=None`` and HttpReceiver decides how long to honour them.

32 base64 characters keep 192 bits of the MAC: far beyond guessing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import NamedTuple

from .message import STREAM_ID_RE, UUID_RE

MAC_CHARS = 32
#: The MAC is over a label plus the payload, so the same secret could sign other things
#: later without a token for one being valid for another. Tokens with an issue time:
_LABEL = b"manycore-unsubscribe-issued:"
#: Tokens minted before issue times existed (still accepted; never minted any more).
_UNTIMED_LABEL = b"manycore-unsubscribe:"
#: Enough decimal digits for any Unix time of the next thousands of years.
_MAX_TIME_DIGITS = 12


class Token(NamedTuple):
    uuid: str
    stream_id: str | None
    #: Unix seconds the token was minted; None for a token from before issue times.
    issued: int | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, label: bytes, payload: bytes) -> str:
    return _b64(hmac.new(secret, label + payload, hashlib.sha256).digest())[:MAC_CHARS]


def make_token(
    secret: bytes, uuid: str, stream_id: str | None = None, issued: int | None = None
) -> str:
    """A token for the message, issued at ``issued`` (Unix seconds; default now)."""
    when = int(time.time()) if issued is None else issued
    payload = f"{when}:{uuid}" if not stream_id else f"{when}:{uuid}:{stream_id}"
    raw = payload.encode("ascii")
    return f"{_b64(raw)}.{_mac(secret, _LABEL, raw)}"


def read_token(secret: bytes, token: str) -> Token | None:
    """The token's contents if it is genuine (either kind), None for anything else."""
    encoded, dot, mac = token.partition(".")
    if not dot or len(mac) != MAC_CHARS or len(encoded) > 400:
        return None
    try:
        raw = _unb64(encoded)
    except (binascii.Error, ValueError):
        return None
    text = raw.decode("ascii", "replace")
    issued: int | None = None
    if hmac.compare_digest(mac.encode(), _mac(secret, _LABEL, raw).encode()):
        stamp, _, text = text.partition(":")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_TIME_DIGITS):
            return None
        issued = int(stamp)
    elif not hmac.compare_digest(mac.encode(), _mac(secret, _UNTIMED_LABEL, raw).encode()):
        return None
    uuid, _, stream_id = text.partition(":")
    if not UUID_RE.fullmatch(uuid) or (stream_id and not STREAM_ID_RE.fullmatch(stream_id)):
        return None
    return Token(uuid, stream_id or None, issued)


def parse_token(secret: bytes, token: str) -> tuple[str, str | None] | None:
    """(uuid, stream id) for a genuine token of either kind, None for anything else."""
    found = read_token(secret, token)
    return None if found is None else (found.uuid, found.stream_id)
