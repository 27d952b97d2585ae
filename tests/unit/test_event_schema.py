"""docs/events.schema.json against the code: every event type, bounce type and category the
services can emit is in the schema, and the events each service's functions build conform,
including one per recipient of every real-world report in the bounce corpora."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from manycore_common import bounce_rules, events, feedbacktag
from manycore_mxserver.authenticate import Finding, Scope, analyse
from manycore_mxserver.classify import Classification, Envelope, Settings, classify
from manycore_mxserver.record import events_for
from manycore_mxserver.reports import Failure
from manycore_postfixlog import outcomes
from manycore_postfixlog.logparse import Delivery, Expired
from manycore_postfixlog.state import Deferral, Message
from tests import corpus
from tests.eventschema import assert_valid, problems, schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"
NOW = 1_700_000_000.0
MSG = Message(
    "0b7e3c9a-6f1d-4e2b-9a55-3c1f0d2e4b6a",
    "spring-sale",
    "example.com",
    "b0b7e3c9a@bounce.example.com",
    ("ok@example.org", "later@example.org", "gone@example.org"),
    deferrals={"later@example.org": Deferral("450 4.2.1 busy", "4.2.1", "192.0.2.7")},
)


def _branch(event: str) -> dict[str, Any]:
    for rule in schema()["allOf"]:
        if rule["if"]["properties"]["event"]["const"] == event:
            return dict(rule["then"])
    raise AssertionError(f"no rule for {event}")


def test_schema_names_exactly_the_event_types_of_the_code() -> None:
    assert schema()["properties"]["event"]["enum"] == list(events.EVENT_TYPES)
    assert {r["if"]["properties"]["event"]["const"] for r in schema()["allOf"]} == set(
        events.EVENT_TYPES
    )
    assert _branch("bounce")["properties"]["type"]["enum"] == list(events.BOUNCE_TYPES)


def test_schema_knows_every_category_the_rules_and_the_corpus_use() -> None:
    known = set(schema()["$defs"]["category"]["enum"])
    assert set(typing.get_args(bounce_rules.Category)) <= known
    assert corpus.CATEGORIES | {"autoreply"} <= known


def test_per_recipient_events_must_name_the_recipient() -> None:
    for kind in ("delivered", "deferred"):
        assert "rcpt" in _branch(kind)["required"], kind
    assert _branch("bounce")["else"]["required"] == ["rcpt"]
    for kind in ("hard", "soft", "unroutable"):
        bounce = events.new_event(
            "bounce", uuid="u1", type=kind, reason="550 5.1.1", category="invalid-recipient"
        )
        assert any("'rcpt' is a required property" in p for p in problems(bounce)), kind
    # Only an auto-reply may come from an address we did not send to (a forwarded mailbox).
    reply = events.new_event(
        "bounce", uuid="u1", type="autoreply", reason="auto-reply", category="autoreply"
    )
    assert problems(reply) == []


@pytest.mark.parametrize(
    ("status", "dsn", "text"),
    [
        ("sent", "2.0.0", "250 2.0.0 ok"),
        ("bounced", "5.1.1", "550 5.1.1 no such user"),
        ("expired", "4.4.7", "message expired"),
        ("deferred", "4.2.1", "450 4.2.1 busy"),
    ],
)
def test_postfixlog_delivery_events(status: str, dsn: str, text: str) -> None:
    record = Delivery(
        NOW, "Q1", "ok@example.org", None, status, "mx[192.0.2.7]:25", "192.0.2.7", dsn, text
    )
    actions = outcomes.actions(record, MSG, deferred_events=True)
    built = [a.event for a in actions if a.event is not None]
    assert built
    assert_valid(built)


def test_postfixlog_expiry_and_refusal_events() -> None:
    expired = outcomes.actions(Expired(NOW, "Q1", MSG.return_path), MSG)
    built = [a.event for a in expired if isinstance(a, outcomes.Final)]
    built.append(outcomes.refusal_event(MSG, "nobody@example.org", 550, "5.1.2 bad domain", NOW))
    assert len(built) == 4
    assert_valid(built)


def test_error_events_of_every_service() -> None:
    try:
        raise ValueError("broken")
    except ValueError as exc:
        failed = exc
    built = [
        events.error_event("transformer", "no DKIM key", uuid="u1", streamid="s"),
        events.error_event("postfixlog", "postfix refused the message", exc=failed),
    ]
    assert_valid(built)
    assert problems({"event": "error", "id": "x", "timestamp": 1}) != []


KEY = b"k" * 32
SCOPE = Scope((KEY,), frozenset({"bounce.example.com"}), 256 * 1024, 100)


def _tag(kind: feedbacktag.Kind, rcpt: str, uuid: str = "u1") -> feedbacktag.Tag:
    tag = feedbacktag.read_local_part([KEY], feedbacktag.make_local_part(KEY, kind, uuid, rcpt))
    assert tag is not None
    return tag


def _mx_events(result: Classification, data: bytes) -> list[dict[str, Any]]:
    """MxServer's events for a report as if it had come back to the return paths of our
    message to every address it names (the corpus' own messages carry no tag of ours)."""
    named = [a for f in result.failures for a in (f.rcpt, f.original_rcpt) if a]
    named += [result.email] if result.email else []
    tags = [_tag("bounce", a) for a in dict.fromkeys(named) if "@" in a] or [
        _tag("bounce", "someone@example.org")
    ]
    analysis = analyse(result, "", tags, data, SCOPE)
    return [e for _, e in events_for(analysis.findings, {"x": "y"}, NOW)]


def test_unsubscribe_events() -> None:
    # HttpReceiver's one-click handler and MxServer's mailto handler.
    built = [events.new_event("unsubscribe", uuid="u1", streamid="spring-sale")]
    found = [
        Finding("unsubscribe", _tag("unsub", "a@example.org"), "a@example.org"),
        Finding("unsubscribe", _tag("unsub", "b@example.org"), None),
    ]
    built += [e for _, e in events_for(found, {}, NOW)]
    assert_valid(built)


def test_mxserver_events_of_the_fixture_reports() -> None:
    expected: dict[str, dict[str, Any]] = yaml.safe_load((FIXTURES / "expected.yaml").read_text())
    built = []
    for name, want in expected.items():
        data = (FIXTURES / name).read_bytes()
        result = classify(Envelope(want["mail_from"], (want["rcpt"],)), data, Settings())
        built += _mx_events(result, data)
    assert {e["event"] for e in built} >= {"bounce", "spam-report"}
    assert_valid(built)


def test_mxserver_events_of_every_corpus_report() -> None:
    """Each real report as if it were about one of our messages: one event per recipient
    it names, each valid."""
    built = 0
    broken: dict[str, list[str]] = {}
    for entry in corpus.load():
        data = entry.path.read_bytes()
        for event in _mx_events(classify(corpus.ENVELOPE, data, Settings()), data):
            built += 1
            if found := problems(event):
                broken.setdefault(entry.file, []).extend(found)
    assert built > 300
    assert not broken, broken


def test_a_multi_recipient_bounce_per_recipient() -> None:
    failures = (
        Failure("a@example.org", True, "5.1.1", "550 5.1.1 unknown", "mx.example.org"),
        Failure("b@example.org", False, "4.2.2", "452 4.2.2 mailbox full", None),
    )
    found = [Finding("bounce", _tag("bounce", f.rcpt), f.rcpt, f) for f in failures]
    pairs = events_for(found, {}, NOW)
    assert [e["rcpt"] for _, e in pairs] == ["a@example.org", "b@example.org"]
    assert_valid(e for _, e in pairs)
