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
from manycore_mxserver.record import events_for

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


def test_events_for_a_multi_recipient_dsn() -> None:
    want = EXPECTED["dsn_multi.eml"]
    result = classify(
        Envelope("", (want["rcpt"],)), (FIXTURES / "dsn_multi.eml").read_bytes(), SETTINGS
    )
    pairs = events_for(result, now=1_700_000_000)
    assert [key for key, _ in pairs] == [
        "bounced:u1002:alice@receiver.example",
        "bounced:u1002:carol@receiver.example",
    ]
    first = pairs[0][1]
    assert first["event"] == "bounce" and first["type"] == "hard"
    assert first["category"] == "mailbox-full" and "Mailbox full" in first["reason"]
    assert first["timestamp"] == 1_700_000_000 and first["uuid"] == "u1002"


def test_delay_notices_and_own_dsns_make_no_event() -> None:
    for name in ("dsn_delayed.eml", "exim_delay.eml", "dsn_own_postfix.eml", "human_reply.eml"):
        want = EXPECTED[name]
        result = classify(Envelope("", (want["rcpt"],)), (FIXTURES / name).read_bytes(), SETTINGS)
        assert events_for(result, now=0) == [], name


@settings(max_examples=200)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    classify(Envelope("", ("bounce-abc@rp.example.com",)), data, SETTINGS)
