"""Idempotent submission: the claim a message leaves in Redis, so that the same message sent
again within the window (a client that lost our 250 or 200 and sends again) is answered as
the first one was instead of being queued twice.

Pure: ``claim_for`` says which Redis key a message claims and what it leaves there,
``read_claim`` reads that back, ``parse_idempotency_key`` checks the HTTP header. The push
script makes the claim in the same step as the push (``ReliableQueue.push_claimed``), so
of two concurrent submissions exactly one is queued, and a refused push leaves no claim.

What is claimed:

* The X-Uuid, for the whole customer (one customer file is one customer, whichever login
  or door a message came through): the X-Uuid is already the customer's id of the message
  in every event, so two messages with one X-Uuid could not be told apart anyway.
* The ``Idempotency-Key`` header of the HTTP API (draft-ietf-httpapi-idempotency-key-header)
  instead, when a request carries one, for the login that sent it: the draft has the client
  make up the key, so two clients may well pick the same one.

The Redis key (``manycore_common.keyspace``) is ``idem:`` and 128 bits of SHA-256 of what is
claimed, in base64url: 27 bytes whatever the uuid or key is, and about 72 bytes per claim as
``MEMORY USAGE`` counts (README, "Idempotent submission"). It lives for the window (``SET NX EX``).

An X-Uuid claim's value is the priority digit. An Idempotency-Key claim's value also holds
what the key was used for, so that the key coming back with another request is refused
(422, as the draft §2.7 and Stripe's API do) rather than answered as a duplicate:

    priority digit | "#" | 48 bits of SHA-256 of the request body | X-Uuid

48 bits because the value then stays within 44 bytes with a 36-character X-Uuid, which
Redis stores in the key's own allocation (embstr), so the digest costs no memory beyond the
7 bytes (README figures). It stops mistakes of the customer's own client (only its login can
use its keys), for which 2**-48 is no risk. Values written before the digest existed
(``digit uuid``) are read without one: only their X-Uuid is compared.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from . import keyspace
from .message import PRIORITY_DEFAULT, PRIORITY_HIGH, MessageRejected

#: How long a claim is kept, unless ``common-config.idempotency-window-seconds`` says else.
DEFAULT_WINDOW_SECONDS = 24 * 3600
#: Longest Idempotency-Key accepted, after its quotes are taken off.
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: The header's value: printable ASCII. The draft makes it a Structured Field String
#: (RFC 8941 §3.3.3: in double quotes, with ``\\"`` and ``\\\\`` escapes); a bare token,
#: which many clients send, is read as the key itself.
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_HASH_BYTES = 16  # 128 bits: no two claims collide by chance in any window
#: Octets of the request body's SHA-256 kept in an Idempotency-Key claim (see above).
BODY_DIGEST_BYTES = 6
_DIGEST_MARK = b"#"


@dataclass(frozen=True, slots=True)
class Claim:
    """What one submission claims: the Redis ``key``, the ``value`` it leaves there (what a
    duplicate is answered from) and for how many seconds."""

    key: str
    value: bytes
    window: int


@dataclass(frozen=True, slots=True)
class Earlier:
    """What the first submission of a claim left: its priority, and its X-Uuid when the
    claim was an Idempotency-Key (an X-Uuid claim is its own uuid)."""

    priority: int
    uuid: str | None
    #: The request body's digest (an Idempotency-Key claim made since digests exist).
    digest: bytes | None = None


def bad_idempotency_key(text: str) -> MessageRejected:
    # The draft (§2.7) answers a malformed key with 400.
    return MessageRejected("bad-idempotency-key", 550, "5.6.0", text, 400)


def key_reused(key_uuid: str, uuid: str) -> MessageRejected:
    # The draft (§2.7): a key reused for another request payload gets 422.
    if key_uuid == uuid:
        text = (
            f"Idempotency-Key was already used for another request body (X-Uuid {uuid}): "
            "a retry must send the same bytes"
        )
    else:
        text = (
            f"Idempotency-Key was already used for the message with X-Uuid {key_uuid}, not {uuid}"
        )
    return MessageRejected("idempotency-key-reused", 550, "5.6.0", text, 422)


def body_digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()[:BODY_DIGEST_BYTES]


def reused_for_another(earlier: Earlier, uuid: str, body: bytes) -> bool:
    """Whether a held claim was made by another request than this one (pure): another X-Uuid,
    or (when the claim kept one) another body."""
    if earlier.uuid is not None and earlier.uuid != uuid:
        return True
    return earlier.digest is not None and earlier.digest != body_digest(body)


def parse_idempotency_key(values: list[str]) -> str | None:
    """The key of the ``Idempotency-Key`` header lines of a request: None without one;
    MessageRejected (400) for several, an empty one, more than 255 characters or
    characters other than printable ASCII."""
    if not values:
        return None
    if len(values) > 1:
        raise bad_idempotency_key("Idempotency-Key appears more than once")
    raw = values[0].strip(" \t")
    quoted = _SF_STRING.fullmatch(raw)
    key = re.sub(r"\\(.)", r"\1", quoted[1]) if quoted else raw
    if not key or not _PRINTABLE.fullmatch(key) or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise bad_idempotency_key(
            "Invalid Idempotency-Key header: use 1 to "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"
        )
    return key


def redis_key(material: bytes) -> str:
    digest = hashlib.sha256(material).digest()[:_HASH_BYTES]
    return keyspace.current().idempotency(base64.urlsafe_b64encode(digest).rstrip(b"=").decode())


def claim_for(
    uuid: str,
    priority: int,
    window: int,
    *,
    idempotency_key: str | None = None,
    login: str | None = None,
    body: bytes = b"",
) -> Claim | None:
    """The claim of a message with ``uuid`` and ``priority``; None when the window is 0
    (idempotency off). With ``idempotency_key`` the key is claimed, for ``login``, and the
    claim keeps the digest of the request ``body``."""
    if window <= 0:
        return None
    digit = b"%d" % priority
    if idempotency_key is None:
        return Claim(redis_key(b"u\0" + uuid.encode()), digit, window)
    # The NUL cannot occur in a login of the config nor in a key (printable ASCII), so no
    # two (login, key) pairs give the same bytes.
    material = b"k\0" + (login or "").encode() + b"\0" + idempotency_key.encode()
    value = digit + _DIGEST_MARK + body_digest(body) + uuid.encode()
    return Claim(redis_key(material), value, window)


def read_claim(value: bytes) -> Earlier:
    """What ``claim_for`` left, read back. A value it cannot have left (someone else wrote
    the key) reads as the default priority with no uuid."""
    priority = PRIORITY_HIGH if value[:1] == str(PRIORITY_HIGH).encode() else PRIORITY_DEFAULT
    digest: bytes | None = None
    rest = value[1:]
    if rest[:1] == _DIGEST_MARK and len(rest) > BODY_DIGEST_BYTES + 1:
        digest, rest = rest[1 : 1 + BODY_DIGEST_BYTES], rest[1 + BODY_DIGEST_BYTES :]
    return Earlier(priority, rest.decode("ascii", "replace") or None, digest)
