"""PostfixLog's records → events (pure): deliveries, expiries, deferrals and refusals."""

from __future__ import annotations

from manycore_postfixlog import outcomes
from manycore_postfixlog.logparse import Delivery, Expired
from manycore_postfixlog.state import Deferral, Message

MSG = Message(
    "u1",
    "s1",
    "example.com",
    "bounce-u1@rp.example",
    ("Ok@Example.org", "later@example.org", "gone@example.org"),
    finals=frozenset({"gone@example.org"}),
    deferrals={"later@example.org": Deferral("450 4.2.1 busy", "4.2.1", "192.0.2.7")},
)


def delivery(rcpt: str, status: str, dsn: str = "2.0.0", text: str = "250 ok") -> Delivery:
    return Delivery(1000.0, "Q1", rcpt, None, status, "mx[192.0.2.7]:25", "192.0.2.7", dsn, text)


def test_sent_gives_delivered_with_our_spelling_of_the_recipient() -> None:
    (action,) = outcomes.actions(delivery("ok@example.org", "sent"), MSG)
    assert isinstance(action, outcomes.Final)
    event = action.event
    assert {k: event[k] for k in ("event", "uuid", "streamid", "timestamp", "ip", "rcpt")} == {
        "event": "delivered",
        "uuid": "u1",
        "streamid": "s1",
        "timestamp": 1000,
        "ip": "192.0.2.7",
        "rcpt": "Ok@Example.org",
    }


def test_expiry_soft_bounces_every_recipient_without_a_final_event() -> None:
    actions = outcomes.actions(Expired(2000.0, "Q1", "bounce-u1@rp.example"), MSG)
    assert [a.rcpt for a in actions] == ["Ok@Example.org", "later@example.org"]
    later = actions[1]
    assert isinstance(later, outcomes.Final)
    assert later.event["type"] == "soft" and later.event["reason"] == "450 4.2.1 busy"
    assert later.event["category"] == "mailbox-unavailable" and later.event["ip"] == "192.0.2.7"
    first = actions[0]
    assert isinstance(first, outcomes.Final)
    assert first.event["reason"] == outcomes.EXPIRED_REASON and "ip" not in first.event


def test_deferral_is_remembered_and_an_event_only_when_asked() -> None:
    record = delivery("later@example.org", "deferred", "4.2.1", "host x said: 450 4.2.1 busy")
    (quiet,) = outcomes.actions(record, MSG, once="7:42")
    assert isinstance(quiet, outcomes.Deferred)
    assert quiet.event is None and quiet.once == "7:42"
    assert quiet.deferral == Deferral("450 4.2.1 busy", "4.2.1", "192.0.2.7")
    (loud,) = outcomes.actions(record, MSG, deferred_events=True)
    assert isinstance(loud, outcomes.Deferred) and loud.event is not None
    assert loud.event["event"] == "deferred" and loud.event["category"] == "mailbox-unavailable"


def test_refusal_at_rcpt_is_a_final_bounce() -> None:
    event = outcomes.refusal_event(
        MSG, "x@nowhere.test", 550, "5.1.2 <x@nowhere.test>: Host or domain name not found", 5.0
    )
    assert (event["type"], event["category"], event["timestamp"]) == ("unroutable", "dns", 5)
    assert event["reason"] == "550 5.1.2 <x@nowhere.test>: Host or domain name not found"
