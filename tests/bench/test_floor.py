"""The floor pipeline's own pieces (bench/floor.py): its DKIM signature must be one a real
verifier (dkimpy, as the sink uses) accepts, or the floor would skip work the stack does;
its dot-stuffing must survive a line that starts with a dot."""

from __future__ import annotations

import base64

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.floor import dkim_header, pack, relaxed_body, stuffed, unpack

MESSAGE = (
    b"From: Shop <news@example.com>\r\nTo: a@example.net\r\nSubject: Hi\r\n"
    b" folded  there\r\nMIME-Version: 1.0\r\n\r\nline one  \r\n.dot\t\tline\r\n\r\n\r\n"
)


def test_signature_verifies_with_dkimpy() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mailer._domainkey.example.com."
        return record

    signed = dkim_header(MESSAGE, key, "example.com", "mailer", 1700000000) + MESSAGE
    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"line one", b"line 0ne"), dnsfunc=dns)


def test_relaxed_body() -> None:
    assert relaxed_body(b"a  b \t\r\nc\r\n\r\n") == b"a b\r\nc\r\n"
    assert relaxed_body(b"\r\n\r\n") == b""


def test_stuffing_and_packing() -> None:
    assert stuffed(b".a\r\nb\r\n.c\r\n") == b"..a\r\nb\r\n..c\r\n.\r\n"
    assert unpack(pack(b"s@x", [b"a@y", b"b@y"], b"M\nx")) == (b"s@x", [b"a@y", b"b@y"], b"M\nx")
