"""The webhook signature against a vector computed with the openssl command line:
printf '%s' '1700000000.[{"event":"delivered","id":"abc"}]' | openssl dgst -sha256 -hmac whsec_test
"""

from __future__ import annotations

from manycore_backdata import signature

SECRET = b"whsec_test"
BODY = b'[{"event":"delivered","id":"abc"}]'
VECTOR = "fb09e05592502798f033a90b3850ddc508e67eb447108adaf8a15449c5b3a8fe"


def test_sign_matches_openssl() -> None:
    assert signature.sign(SECRET, 1_700_000_000, BODY) == f"t=1700000000,v1={VECTOR}"


def test_verify_accepts_fresh_and_refuses_tampered_or_old() -> None:
    header = signature.sign(SECRET, 1_700_000_000, BODY)
    assert signature.verify(SECRET, header, BODY, now=1_700_000_100)
    assert not signature.verify(SECRET, header, BODY + b" ", now=1_700_000_100)
    assert not signature.verify(b"other", header, BODY, now=1_700_000_100)
    assert not signature.verify(SECRET, header, BODY, now=1_700_001_000)  # replay
    assert not signature.verify(SECRET, "v1=" + VECTOR, BODY, now=1_700_000_000)
    assert not signature.verify(SECRET, "t=abc,v1=" + VECTOR, BODY, now=1_700_000_000)


def test_verify_accepts_any_of_several_v1_during_a_secret_change() -> None:
    header = f"t=1700000000,v1={'0' * 64},v1={VECTOR}"
    assert signature.verify(SECRET, header, BODY, now=1_700_000_000)
