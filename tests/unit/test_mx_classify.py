"""MxServer's classification against a corpus of bounce, report and reply messages in the
formats real MTAs send (tests/fixtures/bounces, each with its expected outcome)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from manycore_common.bounce_rules import category, permanent_type
from manycore_mxserver.classify import Envelope, Settings, classify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((FIXTURES / "expected.yaml").read_text())
SETTINGS = Settings(
    own_mtas=frozenset({"mxserver.example.com"}), abuse_addresses=frozenset({"abuse@example.com"})
)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus(name: str) -> None:
    want = EXPECTED[name]
    data = (FIXTURES / name).read_bytes()
    result = classify(Envelope(want["mail_from"], (want["rcpt"],)), data, SETTINGS)
    assert result.kind == want["kind"], result
    assert result.uuid == want.get("uuid")
    if "email" in want:
        assert result.email == want["email"]
    got = [(f.rcpt, f.permanent) for f in result.failures]
    assert got == [(rcpt, permanent) for rcpt, permanent, *_ in want.get("failures", [])]
    for failure, (_, _permanent, kind, cat) in zip(
        result.failures, want.get("failures", []), strict=True
    ):
        if kind is None:
            continue
        got_cat = category(failure.status or "", failure.reason)
        got_kind = permanent_type(got_cat) if failure.permanent else "soft"
        assert got_kind == kind, (failure, got_cat)
        if cat is not None:
            assert got_cat == cat, failure
        assert failure.reason


@settings(max_examples=200)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    classify(Envelope("", ("bounce-abc@rp.example.com",)), data, SETTINGS)
