"""Feedback addresses that prove which message, and which recipient, they belong to.

Every address MxServer believes (the envelope sender Postfix uses, the Message-ID, the
``mailto:`` unsubscribe address) is minted here, one per recipient (VERP: every recipient
gets its own envelope), and carries a truncated HMAC over what it names. An outsider cannot
mint one, so a report sent to any other address yields no event; and a recipient who sees
their own return path learns nothing that speaks for anybody else, because the tag is bound
to their address too.

    local part  = <kind><uuid>.<blob>          at most 64 octets (RFC 5321 §4.5.3.1.1)
    kind        = "b" (bounces: the envelope sender) | "u" (unsubscribe mailto)
                | "m" (the Message-ID's left part: never proof, see below)
    uuid        = the message's X-Uuid, 1-36 of [a-z0-9-] (an RFC 4122 UUID fits)
    blob        = base32 (RFC 4648 §6, lower case, no padding) of 16 octets:
                  fingerprint(4) | stream(4) | mac(8)
    fingerprint = HMAC-SHA256(key, "manycore-rcpt:" + normalised recipient)[:4]
    stream      = SHA-256(X-Stream-Id)[:4], or four zero octets without one
    mac         = HMAC-SHA256(key, "manycore-feedback:1:" + kind + uuid + "." + fp + stream)[:8]

1 + 36 + 1 + 26 = 64. Base32 and lower case because mail systems fold the case of local
parts they hand back (RFC 5321 says they should not; some do). The stream id itself does not
fit, so the Transformer records ``stream hash → stream id`` once per stream id (not per
message) in the Redis hash ``keyspace.Keyspace.feedback_streams`` (``MANYCORE-FEEDBACK-STREAMS``:
stream hash, 8 hex digits → X-Stream-Id; one field per stream id ever used).

The Message-ID is a tag of its own kind because replies copy it into In-Reply-To and
References (RFC 5322 §3.6.4), where every other recipient of a reply-all can read it: were it
the return path, they could send a report about this recipient. Only "b" and "u" tags are
proof (:data:`PROOF_KINDS`); the kind is inside the MAC, so an "m" tag cannot be turned into
one. The envelope sender and the List-Unsubscribe header stay in the recipient's own copy.

Verification is stateless: :func:`read_local_part` checks the MAC with each configured key
(the current one first, then those being retired, so a return path of a message still in a
five-day Postfix queue verifies after a rotation). :meth:`Tag.names` then tells whether an
address found in a report is the recipient the tag was minted for. Pure functions only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from hashlib import _Hash as _Sha256

Kind = Literal["bounce", "unsub", "message"]
#: The kinds that prove a report: accepted at RCPT and believed in a quoted original.
PROOF_KINDS: frozenset[Kind] = frozenset({"bounce", "unsub"})

#: The longest X-Uuid the receivers accept: what is left of 64 octets after kind, dot, blob.
MAX_UUID_LENGTH = 36
#: Lower-case letters, digits and inner hyphens: RFC 4122 UUIDs and the older plain ids.
UUID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,34}[a-z0-9])?")

_PREFIX: dict[Kind, str] = {"bounce": "b", "unsub": "u", "message": "m"}
_KIND: dict[str, Kind] = {v: k for k, v in _PREFIX.items()}
_MAC_LABEL = b"manycore-feedback:1:"
_RCPT_LABEL = b"manycore-rcpt:"
_BLOB_CHARS = 26
_NO_STREAM = b"\0\0\0\0"
_LOCAL = re.compile(rf"([bum])({UUID_RE.pattern})\.([a-z2-7]{{{_BLOB_CHARS}}})")
#: A tagged address anywhere in a text (a quoted original, a Message-ID, a report body).
TAGGED_ADDRESS_RE = re.compile(
    rf"(?<![\w.+-])([bum][a-z0-9-]{{1,36}}\.[a-z2-7]{{{_BLOB_CHARS}}})@([a-z0-9.-]{{1,253}})",
    re.IGNORECASE,
)


def normalize_address(address: str) -> str:
    """The form a recipient is fingerprinted (and suppressed) in: no brackets or blanks,
    ASCII letters in lower case, at most one trailing dot of the domain dropped, and a
    non-ASCII domain label in its ASCII (IDNA) form when that form names the same label
    again, so ``User@Bücher.de`` and ``user@xn--bcher-kva.de`` are one recipient.

    Nothing that another mailbox could be written as is folded into this one: only ASCII
    case (str.lower() would also fold the Kelvin sign into "k"), and no IDNA 2003 mapping
    that changes a label (ß → ss, dropped joiners): Postfix delivers those elsewhere."""
    address = address.strip().strip("<>").strip()
    if address.isascii():
        # All ASCII: str.lower() folds A-Z and nothing else, in C (translate with a dict
        # looks each character up in Python's mapping: 1.4 against 0.4 µs an address).
        address = address.lower()
        local, at, domain = address.rpartition("@")
        return f"{local}@{domain.removesuffix('.')}" if at else address
    local, at, domain = address.rpartition("@")
    if not at:
        return address.translate(_ASCII_LOWER)
    domain = domain.translate(_ASCII_LOWER)
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain.isascii():
        domain = ".".join(_ascii_label(label) for label in domain.split("."))
    return f"{local.translate(_ASCII_LOWER)}@{domain}"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_label(label: str) -> str:
    """A label's IDNA A-label when it decodes back to the same label, else the label."""
    if label.isascii():
        return label
    with contextlib.suppress(UnicodeError):
        ascii_label = label.encode("idna").decode("ascii")
        if ascii_label.encode("ascii").decode("idna") == label:
            return ascii_label
    return label


def fingerprint(key: bytes, address: str) -> bytes:
    return _fingerprint_of(key, normalize_address(address))


def _fingerprint_of(key: bytes, normalized: str) -> bytes:
    return _hmac_sha256(key)(_RCPT_LABEL + normalized.encode())[:4]


#: RFC 2104 §2: the key block XOR ipad (0x36) and XOR opad (0x5c), as translation tables.
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_SHA256_BLOCK = 64


@functools.lru_cache(maxsize=8)
def _hmac_sha256(key: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 with ``key`` (RFC 2104), its two keyed SHA-256 states computed once per
    key and copied per MAC: every copy of a message needs four MACs, and OpenSSL's one-shot
    ``hmac.digest`` hashes both key blocks again each time (2.1 against 0.8 µs a MAC)."""
    inner_copy, outer_copy = _hmac_states(key)

    def mac(message: bytes) -> bytes:
        inner = inner_copy()
        inner.update(message)
        outer = outer_copy()
        outer.update(inner.digest())
        return outer.digest()

    return mac


def _hmac_states(key: bytes) -> tuple[Callable[[], _Sha256], Callable[[], _Sha256]]:
    """The ``copy`` methods of the inner and outer keyed SHA-256 states of HMAC with ``key``
    (RFC 2104 §2: the key block XOR ipad, XOR opad)."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    block = key.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(block.translate(_IPAD)).copy, hashlib.sha256(block.translate(_OPAD)).copy


@functools.lru_cache(maxsize=256)
def stream_hash(stream_id: str | None) -> bytes:
    """SHA-256(X-Stream-Id)[:4]; remembered, as the messages of a stream share their id."""
    if not stream_id:
        return _NO_STREAM
    return hashlib.sha256(stream_id.encode("utf-8")).digest()[:4]


def stream_field(stream_id: str) -> str:
    """The field name of a stream id in the streams hash."""
    return stream_hash(stream_id).hex()


def _mac(key: bytes, prefix: str, uuid: str, fp: bytes, stream: bytes) -> bytes:
    message = _MAC_LABEL + f"{prefix}{uuid}.".encode("ascii") + fp + stream
    return _hmac_sha256(key)(message)[:8]


#: Every 10-bit group as its two base32 characters (RFC 4648 §6 alphabet, lower case).
_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = tuple(a + b for a in _B32_ALPHABET for b in _B32_ALPHABET)


def _b32(data: bytes) -> str:
    """RFC 4648 §6 base32 of the 16-octet blob, lower case, no padding: 128 bits and two zero
    bits make 13 groups of 10. Python 3.11's base64.b32encode is a Python loop; this is the
    same encoding in 13 look-ups (a property test checks it against b32encode)."""
    return _b32_head(data[:8]) + _b32_tail(data[7], data[8:])


def _b32_head(fp_stream: bytes) -> str:
    """The first 12 characters of ``_b32(fp_stream + mac)``: the top 60 of its 64 bits, the
    same in the three tags of a copy, so encoded once for them."""
    n = int.from_bytes(fp_stream, "big") >> 4
    p = _B32_PAIRS
    # One f-string: concatenating the pairs one by one cost twice as much.
    return (
        f"{p[n >> 50]}{p[n >> 40 & 1023]}{p[n >> 30 & 1023]}"
        f"{p[n >> 20 & 1023]}{p[n >> 10 & 1023]}{p[n & 1023]}"
    )


def _b32_tail(last: int, mac: bytes) -> str:
    """The last 14 characters: the low 4 bits of ``last`` (the blob's eighth octet), the
    8-octet MAC and two zero bits, 70 bits in 7 groups."""
    n = ((last & 15) << 64 | int.from_bytes(mac, "big")) << 2
    p = _B32_PAIRS
    return (
        f"{p[n >> 60]}{p[n >> 50 & 1023]}{p[n >> 40 & 1023]}{p[n >> 30 & 1023]}"
        f"{p[n >> 20 & 1023]}{p[n >> 10 & 1023]}{p[n & 1023]}"
    )


@dataclass(frozen=True, slots=True)
class Tag:
    """A verified feedback tag: which message, which kind of address, which recipient."""

    kind: Kind
    uuid: str
    #: SHA-256(X-Stream-Id)[:4], or zeros when the message had none.
    stream: bytes
    fingerprint: bytes
    #: The key the MAC verified with: the recipient's fingerprint is checked with it too.
    key: bytes = field(repr=False)

    @property
    def has_stream(self) -> bool:
        return self.stream != _NO_STREAM

    @property
    def stream_field(self) -> str | None:
        """The field of this message's stream id in the streams hash, if it had one."""
        return self.stream.hex() if self.has_stream else None

    def names(self, address: str) -> bool:
        """Whether ``address`` is the recipient this tag was minted for."""
        return hmac.compare_digest(fingerprint(self.key, address), self.fingerprint)

    def recipient(self, candidates: Iterable[str]) -> str | None:
        """The first candidate address that is this tag's recipient."""
        return next((c for c in candidates if self.names(c)), None)


def make_local_part(
    key: bytes, kind: Kind, uuid: str, rcpt: str, stream_id: str | None = None
) -> str:
    """The tagged local part for ``rcpt`` of message ``uuid``; ValueError for a bad uuid."""
    if not UUID_RE.fullmatch(uuid):
        raise ValueError(f"uuid must be 1 to {MAX_UUID_LENGTH} of a-z, 0-9 and inner '-'")
    prefix = _PREFIX[kind]
    fp = fingerprint(key, rcpt)
    stream = stream_hash(stream_id)
    return f"{prefix}{uuid}.{_b32(fp + stream + _mac(key, prefix, uuid, fp, stream))}"


def make_address(
    key: bytes, kind: Kind, uuid: str, rcpt: str, domain: str, stream_id: str | None = None
) -> str:
    return f"{make_local_part(key, kind, uuid, rcpt, stream_id)}@{domain}"


class CopyTags(NamedTuple):
    """The three tagged addresses of one recipient's copy of a message (a named tuple: one
    per copy, and a frozen dataclass costs twice as much to build)."""

    bounce: str
    unsub: str
    message: str


def make_copy_tags(
    key: bytes,
    uuid: str,
    normalized_rcpt: str,
    domain: str,
    stream_hash_: bytes,
) -> CopyTags:
    """:func:`make_address` of each kind for one recipient, already normalised
    (:func:`normalize_address`), with the stream's hash (:func:`stream_hash`): the
    fingerprint is computed once rather than three times; only the MACs differ by kind.
    ValueError for a bad ``uuid``, as make_local_part."""
    if not UUID_RE.fullmatch(uuid):
        raise ValueError(f"uuid must be 1 to {MAX_UUID_LENGTH} of a-z, 0-9 and inner '-'")
    mac = _hmac_sha256(key)  # remembered per key: its keyed states made once
    fp_stream = mac(_RCPT_LABEL + normalized_rcpt.encode())[:4] + stream_hash_
    # The three tags differ only by kind and MAC: the rest is encoded once.
    signed = f"{uuid}.".encode("ascii") + fp_stream
    head, last = f"{uuid}.{_b32_head(fp_stream)}", fp_stream[7]
    tags = [
        f"{p}{head}{_b32_tail(last, mac(label + signed)[:8])}@{domain}" for p, label in _MAC_LABELS
    ]
    return CopyTags(*tags)


#: Each kind's prefix, and the start of its MAC's message (``_mac``).
_MAC_LABELS = tuple((p, _MAC_LABEL + p.encode("ascii")) for p in ("b", "u", "m"))


def read_local_part(
    keys: Sequence[bytes], local: str, kinds: frozenset[Kind] = PROOF_KINDS
) -> Tag | None:
    """The tag of a local part of one of ``kinds`` whose MAC verifies with one of ``keys``,
    else None."""
    if len(local) > 64:
        return None
    match = _LOCAL.fullmatch(local.lower())
    if match is None:
        return None
    prefix, uuid, blob = match.groups()
    if _KIND[prefix] not in kinds:
        return None
    try:
        raw = base64.b32decode(blob.upper() + "======")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 16:
        return None
    fp, stream, mac = raw[:4], raw[4:8], raw[8:]
    for key in keys:
        if hmac.compare_digest(mac, _mac(key, prefix, uuid, fp, stream)):
            return Tag(_KIND[prefix], uuid, stream, fp, key)
    return None


def read_address(
    keys: Sequence[bytes],
    address: str,
    domains: Iterable[str],
    kinds: frozenset[Kind] = PROOF_KINDS,
) -> Tag | None:
    """The tag of ``local@domain`` when the domain is one of ours and the MAC verifies."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or domain.rstrip(".").lower() not in {d.lower() for d in domains}:
        return None
    return read_local_part(keys, local, kinds)


def find_tags(
    keys: Sequence[bytes], text: str, domains: Iterable[str], limit: int = 8
) -> list[Tag]:
    """Distinct verified proof tags (:data:`PROOF_KINDS`) of addresses at our ``domains``
    found in ``text`` (a quoted original's Return-Path or List-Unsubscribe, an ARF report's
    Original-Mail-From), at most ``limit`` of them. The caller bounds
    ``text``; the pattern is linear."""
    ours = {d.lower() for d in domains}
    found: list[Tag] = []
    seen: set[str] = set()
    for match in TAGGED_ADDRESS_RE.finditer(text):
        local, domain = match.group(1).lower(), match.group(2).rstrip(".").lower()
        if domain not in ours or local in seen:
            continue
        seen.add(local)
        tag = read_local_part(keys, local)
        if tag is not None:
            found.append(tag)
            if len(found) >= limit:
                break
    return found
