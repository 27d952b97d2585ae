"""One-click unsubscribe tokens (RFC 8058).

The Transformer puts ``{{unsubscribe-token}}`` into List-Unsubscribe; HttpReceiver's public
route ``/v1/unsubscribe/<token>`` turns a valid token into an ``unsubscribe`` event. A token
names the message (uuid, and stream id when it had one) and carries an HMAC-SHA256 over
them with a secret only our services know, so it can be neither forged nor guessed, and it
is URL-safe without escaping (RFC 4648 §5 base64url, no padding).

    <base64url(uuid[":" stream-id])>.<base64url(hmac)[:32]>

32 base64 characters keep 192 bits of the MAC: far beyond guessing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from .message import STREAM_ID_RE, UUID_RE

MAC_CHARS = 32
#: The MAC is over this label plus the payload, so the same secret could sign other things
#: later without a token for one being valid for another.
_LABEL = b"manycore-unsubscribe:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> str:
    return _b64(hmac.new(secret, _LABEL + payload, hashlib.sha256).digest())[:MAC_CHARS]


def make_token(secret: bytes, uuid: str, stream_id: str | None = None) -> str:
    payload = uuid if not stream_id else f"{uuid}:{stream_id}"
    raw = payload.encode("ascii")
    return f"{_b64(raw)}.{_mac(secret, raw)}"


def parse_token(secret: bytes, token: str) -> tuple[str, str | None] | None:
    """(uuid, stream id) for a genuine token, None for anything else."""
    encoded, dot, mac = token.partition(".")
    if not dot or len(mac) != MAC_CHARS or len(encoded) > 400:
        return None
    try:
        raw = _unb64(encoded)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(mac.encode(), _mac(secret, raw).encode()):
        return None
    uuid, _, stream_id = raw.decode("ascii", "replace").partition(":")
    if not UUID_RE.fullmatch(uuid) or (stream_id and not STREAM_ID_RE.fullmatch(stream_id)):
        return None
    return uuid, stream_id or None
