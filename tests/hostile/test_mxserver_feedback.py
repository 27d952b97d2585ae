"""Forged feedback against the running MxServer: reports that would drop a customer's
addresses if they were believed. Only a recipient a verified feedback tag names gets an event;
a forger learns nothing from a 250 and gets no event out of a report about anybody else.
The positive cases (a real DSN, an unsubscribe, an ARF report) prove the same server does
give the events it should, with uuid, rcpt and streamid."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common import feedbacktag
from tests.helpers import FEEDBACK_SECRET, RedisServer, Service
from tests.hostile.conftest import assert_alive, configured_service
from tests.mxmail import (
    ABUSE,
    RP,
    arf,
    deliver,
    dsn,
    events,
    original_headers,
    plain,
    register_stream,
    tag,
)

VICTIM = "victim@gmail.example"
ALICE = "alice@receiver.example"
MAX_FAILURES = 50


#: This module's MxServer settings, over the hostile suite's (conftest.py, ``mx``).
MX_SETTINGS: dict[str, Any] = {
    "mxserver.limits": {"max-failures-per-report": MAX_FAILURES},
}


@pytest.fixture
def queues(redis_client: SyncRedis) -> SyncRedis:
    redis_client.flushall()
    return redis_client


def tampered(address: str) -> str:
    """A tagged address with one character of its MAC changed."""
    local, _, domain = address.rpartition("@")
    swap = "b" if local[-5] == "a" else "a"
    return f"{local[:-5]}{swap}{local[-4:]}@{domain}"


def port(mx: Service) -> int:
    return int(mx.port or 0)


# --- forgeries ---------------------------------------------------------------------------


def test_dsn_about_a_non_recipient_to_a_real_return_path_gives_no_event(
    mx: Service, queues: SyncRedis
) -> None:
    """Whoever saw one of our messages knows its return path; it speaks only for ALICE."""
    before = mx.metric("mxserver_unproven_reports_total", 'kind="bounce"')
    rp = tag("f1", ALICE)
    report = dsn(rp, [(VICTIM, "5.1.1", "550 5.1.1 no such user")], original_headers(rp, VICTIM))
    assert deliver(port(mx), "", [rp], report)[0] == 250
    assert events(queues) == []
    assert mx.metric("mxserver_unproven_reports_total", 'kind="bounce"') == before + 1


@pytest.mark.parametrize(
    "address",
    [
        f"bounce-f2@{RP}",  # the old format: any uuid was believed
        f"unsub-f2@{RP}",
        f"abuse-desk@{RP}",
        # A tag minted with somebody else's key, and one with its MAC changed.
        feedbacktag.make_address(b"x" * 32, "bounce", "f2", VICTIM, RP),
        tampered(tag("f2", VICTIM)),
    ],
)
def test_dsn_to_a_made_up_address_is_refused_at_rcpt(
    mx: Service, queues: SyncRedis, address: str
) -> None:
    before = mx.metric("mxserver_refused_total", 'reason="bad-tag"')
    code, reply = deliver(port(mx), "", [address], dsn(address, [(VICTIM, "5.1.1", "x")]))
    assert (code, reply[:5]) == (550, b"5.1.1"), reply
    assert events(queues) == []
    assert mx.metric("mxserver_refused_total", 'reason="bad-tag"') == before + 1


def test_arf_whose_original_we_never_sent_gives_no_event(mx: Service, queues: SyncRedis) -> None:
    forged = feedbacktag.make_address(b"y" * 32, "bounce", "f3", VICTIM, RP)
    for headers in (
        original_headers(forged, VICTIM),
        original_headers(f"bounce-f3@{RP}", VICTIM),
        f"From: <news@{RP}>\r\nTo: <{VICTIM}>\r\nMessage-ID: <f3@{RP}>\r\n",
    ):
        report = arf(ABUSE, headers, VICTIM)
        assert deliver(port(mx), "fbl@isp.example", [ABUSE], report)[0] == 250
    assert events(queues) == []


def test_forty_thousand_failures_give_at_most_one_event_for_the_real_recipient(
    mx: Service, queues: SyncRedis
) -> None:
    rp = tag("f4", ALICE)
    invented = [(f"user{n}@victims.example", "5.1.1", "550 5.1.1 unknown") for n in range(40_000)]
    failures = [invented[0], (ALICE, "5.1.1", "550 5.1.1 unknown"), *invented[1:]]
    truncated = mx.metric("mxserver_reports_truncated_total")
    code, reply = deliver(port(mx), "", [rp], dsn(rp, failures))
    assert code == 250, reply
    got = events(queues)
    assert len(got) <= 1 and all(e["rcpt"] == ALICE and e["uuid"] == "f4" for e in got), got
    assert len(got) == 1  # ALICE was within the first MAX_FAILURES
    assert mx.metric("mxserver_reports_truncated_total") == truncated + 1
    assert_alive(mx)


# --- what real reports give ------------------------------------------------------------------


def test_real_dsn_gives_one_bounce_with_uuid_rcpt_and_streamid(
    mx: Service, queues: SyncRedis
) -> None:
    register_stream(queues, "newsletter-7")
    rp = tag("p1", ALICE, "newsletter-7")
    # RFC 3464 allows long Diagnostic-Code lines; SES and GMX send 1,030-1,250 octets.
    diagnostic = "550 5.1.1 <alice@receiver.example>: mailbox unavailable " + "x" * 1200
    report = dsn(rp, [(ALICE, "5.1.1", diagnostic)], original_headers(rp, ALICE))
    assert max(len(line) for line in report.split(b"\r\n")) >= 1250
    for _ in range(2):  # sent twice: one event
        code, reply = deliver(port(mx), "", [rp], report)
        assert code == 250, reply
    (event,) = events(queues)
    assert event["event"] == "bounce" and event["type"] == "hard"
    assert (event["uuid"], event["rcpt"], event["streamid"]) == ("p1", ALICE, "newsletter-7")


def test_bounce_to_postmaster_is_tied_by_the_quoted_original(
    mx: Service, queues: SyncRedis
) -> None:
    rp = tag("p2", ALICE)
    report = dsn(f"postmaster@{RP}", [(ALICE, "5.1.1", "550 5.1.1 unknown")],
                 original_headers(rp, ALICE))  # fmt: skip
    assert deliver(port(mx), "", [f"postmaster@{RP}"], report)[0] == 250
    (event,) = events(queues)
    assert (event["event"], event["uuid"], event["rcpt"]) == ("bounce", "p2", ALICE)


def test_mail_to_an_unsubscribe_tag_gives_an_unsubscribe(mx: Service, queues: SyncRedis) -> None:
    register_stream(queues, "s-unsub")
    unsub = tag("p3", ALICE, "s-unsub", kind="unsub")
    assert deliver(port(mx), ALICE, [unsub], plain(ALICE, unsub))[0] == 250
    (event,) = events(queues)
    assert (event["event"], event["uuid"], event["rcpt"], event["streamid"]) == (
        "unsubscribe",
        "p3",
        ALICE,
        "s-unsub",
    )


def test_arf_with_our_tagged_return_path_gives_a_spam_report(
    mx: Service, queues: SyncRedis
) -> None:
    register_stream(queues, "s-arf")
    # abuse@ of a return-path domain (RFC 2142) is where many feedback loops send.
    complaint = arf(f"abuse@{RP}", original_headers(tag("p4", ALICE, "s-arf"), ALICE))
    assert deliver(port(mx), "fbl@isp.example", [f"abuse@{RP}"], complaint)[0] == 250
    (event,) = events(queues)
    assert (event["event"], event["uuid"], event["rcpt"], event["streamid"]) == (
        "spam-report",
        "p4",
        ALICE,
        "s-arf",
    )
    assert event["email"] == ALICE


def test_a_return_path_signed_with_the_previous_secret_still_verifies(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, queues: SyncRedis
) -> None:
    """Rotation: the old secret stays as feedback-secret-previous while messages signed with
    it may still be in a Postfix queue (five days)."""
    new = "rotated-feedback-secret-0123456789abcdef"
    settings = {
        "mxserver.hostname": "mx.test",
        "common-config.feedback-secret": new,
        "common-config.feedback-secret-previous": FEEDBACK_SECRET,
    }
    directory = tmp_path_factory.mktemp("mx-rotation")
    with configured_service("mxserver", directory, redis_server.port, settings) as service:
        old = tag("p5", ALICE)
        fresh = feedbacktag.make_address(new.encode(), "bounce", "p6", ALICE, RP)
        for rp in (old, fresh):
            code, reply = deliver(port(service), "", [rp], dsn(rp, [(ALICE, "5.1.1", "x")]))
            assert code == 250, reply
    assert sorted(e["uuid"] for e in events(queues)) == ["p5", "p6"]
