"""DKIM signing (RFC 6376) with relaxed/relaxed canonicalization, rsa-sha256 and, as an extra
signature, ed25519-sha256 (RFC 8463).

Why not dkimpy's signer: it does the RSA step in pure Python (about a tenth of OpenSSL's
rate). Header canonicalization is here, the body's (and its hash) in ``bodycanon``, both at C
speed; the signature is OpenSSL's via ``cryptography``. The tests verify every signature with
dkimpy and with OpenDKIM, so this code is checked against two independent implementations.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from .headers import CRLF, Field, make_field

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

#: Smallest RSA key we sign with at all; below RECOMMENDED_RSA_BITS we warn (RFC 8301 §3.2
#: requires verifiers to accept 1024-2048 bits, and most providers now expect 2048).
MIN_RSA_BITS = 1024
RECOMMENDED_RSA_BITS = 2048

_WSP_RUN = re.compile(rb"[ \t]+")
_B64_LINE = 72
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class KeyError_(ValueError):
    """A key that cannot be used for signing; the message names the problem."""


@dataclass(frozen=True)
class SigningKey:
    algorithm: Algorithm
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    bits: int

    def public_record(self) -> str:
        """The DNS TXT record value that publishes this key (selector._domainkey.domain)."""
        public = self.key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def load_key(pem: bytes) -> SigningKey:
    """An RSA or Ed25519 private key from PEM (PKCS#1 or PKCS#8), or an Ed25519 key as the
    base64 of its 32-byte seed (the form dkimpy and OpenDKIM tools print)."""
    stripped = pem.strip()
    if not stripped.startswith(b"-----"):
        try:
            seed = base64.b64decode(stripped, validate=True)
        except ValueError:
            raise KeyError_("not a PEM key nor a base64 Ed25519 seed") from None
        if len(seed) != 32:
            raise KeyError_("a base64 Ed25519 seed must decode to 32 bytes")
        return SigningKey("ed25519-sha256", ed25519.Ed25519PrivateKey.from_private_bytes(seed), 256)
    try:
        key = serialization.load_pem_private_key(stripped, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyError_(f"cannot load PEM private key: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyError_(f"RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} needed")
        return SigningKey("rsa-sha256", key, key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey("ed25519-sha256", key, 256)
    raise KeyError_(f"unsupported key type {type(key).__name__}; use RSA or Ed25519")


# ----------------------------------------------------------------- canonicalization


def relaxed_header(name: str, raw_value: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfold, runs of WSP to one SP, no WSP at the ends."""
    # The field's own line end goes first: otherwise every field, folded or not, would take
    # the regular expression's path.
    if raw_value.endswith(CRLF):
        raw_value = raw_value[:-2]
    if b"\r" in raw_value or b"\t" in raw_value or b"  " in raw_value:
        raw_value = _WSP_RUN.sub(b" ", raw_value.replace(b"\r\n", b""))
    return name.lower().encode("ascii") + b":" + raw_value.strip(b" ") + CRLF


def relaxed_field(field: Field) -> bytes:
    """The field's relaxed form, kept on the field; a field seen lately (its raw bytes) is
    not canonicalized again: the messages of a sender repeat most of their fields (From,
    Subject, MIME-Version, Content-Type). A field made for one copy only (Message-ID,
    List-Unsubscribe) should have its form set by ``relaxed_new`` instead, so it does not
    crowd the others out."""
    if field.relaxed is None:
        raw = field.raw
        relaxed = _SEEN.get(raw)
        if relaxed is None:
            relaxed = _relaxed(field.key, raw)
            if len(raw) <= _SEEN_FIELD_BYTES:
                if len(_SEEN) >= _SEEN_FIELDS:
                    _SEEN.clear()
                _SEEN[raw] = relaxed
        field.relaxed = relaxed
    return field.relaxed


def relaxed_new(field: Field) -> Field:
    """``field``, its relaxed form set (not remembered in ``_SEEN``)."""
    field.relaxed = _relaxed(field.key, field.raw)
    return field


def new_field(name: str, value: str) -> Field:
    """``make_field(name, value)`` with its relaxed form set, as ``relaxed_new`` would: a
    field made for one copy. Built from the text: a value without tab or run of spaces is,
    but for spaces at its ends, its own relaxed form (RFC 6376 §3.4.2)."""
    field = make_field(name, value)
    if "\t" in value or "  " in value or ":" in name or not field.raw.isascii():
        field.relaxed = _relaxed(field.key, field.raw)
    else:
        field.relaxed = f"{field.key}:{value.strip(' ')}\r\n".encode("ascii")
    return field


#: Raw field → relaxed form, for ``relaxed_field``: at most _SEEN_FIELDS fields of at most
#: _SEEN_FIELD_BYTES each (about 2 MB), emptied when full.
_SEEN: dict[bytes, bytes] = {}
_SEEN_FIELDS = 4096
_SEEN_FIELD_BYTES = 512


def _relaxed(key: str, raw: bytes) -> bytes:
    # ``relaxed_header`` inlined for the common field (one line, single spaces), with the
    # lower-case name's bytes kept (``_label``).
    _, _, raw_value = raw.partition(b":")
    if raw_value.endswith(CRLF):
        raw_value = raw_value[:-2]
    if b"\r" in raw_value or b"\t" in raw_value or b"  " in raw_value:
        return relaxed_header(key, raw_value)
    return _label(key) + raw_value.strip(b" ") + CRLF


@functools.lru_cache(maxsize=512)
def _label(key: str) -> bytes:
    """``name:`` as relaxed canonicalization writes it (``key`` is the lower-case name)."""
    return key.encode("ascii") + b":"


# ----------------------------------------------------------------- signing


@functools.lru_cache(maxsize=256)
def _layout(
    keys: tuple[str, ...], names: tuple[str, ...], oversign: tuple[str, ...]
) -> tuple[str, tuple[int, ...]]:
    """h= and the positions in the field list of the fields it covers, for a header section
    whose field names (lower case, in order) are ``keys``. RFC 6376 §5.4.2: several instances
    of a name are signed from the bottom up. Names in ``oversign`` are listed once more than
    they occur, so a field of that name added later breaks the signature (§8.15).

    Cached by the names alone: every copy of a message, and most messages of a sender, have
    the same layout, so the choice is made once rather than per signature."""
    by_key: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        by_key.setdefault(key, []).append(position)
    h: list[str] = []
    chosen: list[int] = []
    for name in names:
        key = name.lower()
        instances = by_key.get(key, [])
        h += [key] * len(instances)
        chosen += reversed(instances)
        if key in oversign and instances:
            h.append(key)
    return ":".join(h), tuple(chosen)


def _fold_tags(tags: list[str], width: int = 76) -> str:
    """Tags joined by "; ", folded between tags so lines stay short (RFC 5322 §2.1.1);
    relaxed canonicalization turns each fold into one space, so folding is not signed."""
    lines: list[str] = []
    line = ""
    for tag in tags:
        candidate = f"{line}; {tag}" if line else tag
        if line and len(candidate) > width:
            lines.append(line + ";")
            line = tag
        else:
            line = candidate
    lines.append(line)
    return "\r\n\t".join(lines)


def _fold_b64(value: bytes) -> bytes:
    return b"\r\n\t".join(map(value.__getitem__, _b64_lines(len(value))))


@functools.lru_cache(maxsize=8)
def _b64_lines(length: int) -> tuple[slice, ...]:
    """The lines of a b= value of ``length`` characters (one length per key size)."""
    return tuple(slice(i, i + _B64_LINE) for i in range(0, length, _B64_LINE))


@functools.lru_cache(maxsize=64)
def _unsigned(
    algorithm: Algorithm, domain: str, selector: str, timestamp: int, h: str, bh: str
) -> tuple[bytes, bytes]:
    """The DKIM-Signature field up to its empty b=, and the form of it that is signed:
    relaxed and without its final CRLF (RFC 6376 §3.7, step 2). The same for every copy of
    a message (one body hash, one layout, one timestamp), so made once per message and
    key."""
    tags = [
        "v=1",
        f"a={algorithm}",
        "c=relaxed/relaxed",
        f"d={domain}",
        f"s={selector}",
        f"t={timestamp}",
        f"h={h}",
        f"bh={bh}",
    ]
    value = (" " + _fold_tags(tags) + ";\r\n\tb=").encode("ascii")
    return b"DKIM-Signature:" + value, relaxed_header("dkim-signature", value)[:-2]


def sign(
    fields: Sequence[Field],
    bh: str,
    *,
    key: SigningKey,
    domain: str,
    selector: str,
    timestamp: int,
    header_names: Sequence[str],
    oversign: Sequence[str] = ("from",),
) -> Field:
    """The DKIM-Signature field for a message with these header fields and body hash."""
    h, positions = _layout(tuple([f.key for f in fields]), tuple(header_names), tuple(oversign))
    unsigned, signed_self = _unsigned(key.algorithm, domain, selector, timestamp, h, bh)
    # RFC 6376 §5.4 / §3.7: the chosen fields in h= order, each canonicalized (a field every
    # copy shares once per message: ``relaxed_field`` keeps it), then the signature field
    # itself with an empty b=.
    signed = [fields[i].relaxed or relaxed_field(fields[i]) for i in positions]
    signed.append(signed_self)
    data = b"".join(signed)
    if key.algorithm == "rsa-sha256":  # rather than an ABC isinstance check per signature
        signature = cast(rsa.RSAPrivateKey, key.key).sign(data, _PKCS1, _SHA256)
    else:
        # RFC 8463 §3: Ed25519 (PureEdDSA) over the SHA-256 hash of the signed data.
        signature = cast(ed25519.Ed25519PrivateKey, key.key).sign(hashlib.sha256(data).digest())
    b = _fold_b64(binascii.b2a_base64(signature, newline=False))
    return Field("DKIM-Signature", unsigned + b + CRLF, "dkim-signature")
