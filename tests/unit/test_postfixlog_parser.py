"""The Postfix log parser and the classification rules: golden tests on real lines captured
from the test instance (tests/fixtures/postfix), and the edge cases they do not show."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from manycore_common import bounce_rules as rules
from manycore_postfixlog.logparse import Delivery, Expired, parse_line

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "postfix"
NOW = datetime(2026, 12, 1, tzinfo=UTC)
LOGS = ("outcomes", "stop-and-restart")


def golden(name: str) -> tuple[list[str], list[dict[str, Any]]]:
    lines = (FIXTURES / f"{name}.log").read_text().splitlines()
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    return lines, expected


def as_dict(record: Delivery | Expired) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": type(record).__name__, **dataclasses.asdict(record)}
    if isinstance(record, Delivery):
        data["reason"] = record.reason
        if record.status != "sent":
            data["category"] = rules.category(record.dsn, record.reason)
            if record.status == "bounced":
                data["bounce_type"] = rules.permanent_type(data["category"])
    return data


@pytest.mark.parametrize("name", LOGS)
def test_golden_records_of_real_postfix_lines(name: str) -> None:
    lines, expected = golden(name)
    got = []
    for number, line in enumerate(lines, 1):
        record = parse_line(line, NOW)
        if record is not None:
            got.append({"line": number, **as_dict(record)})
    assert got == expected


def to_iso(line: str) -> str:
    """The same line as rsyslog's RSYSLOG_FileFormat would write it."""
    stamp = datetime.strptime(f"2026 {line[:15]}", "%Y %b %d %H:%M:%S")
    return stamp.replace(tzinfo=UTC).isoformat(timespec="microseconds") + line[15:]


@pytest.mark.parametrize("name", LOGS)
def test_iso_8601_timestamps_give_the_same_records(name: str) -> None:
    lines, _ = golden(name)
    for line in lines:
        assert parse_line(to_iso(line), NOW) == parse_line(line, NOW)


def test_every_kind_of_outcome_is_in_the_fixtures() -> None:
    kinds = set()
    for name in LOGS:
        for entry in golden(name)[1]:
            kinds.add((entry["kind"], entry.get("status"), entry.get("category")))
    assert {
        ("Delivery", "sent", None),
        ("Delivery", "bounced", "invalid-recipient"),
        ("Delivery", "deferred", "mailbox-unavailable"),
        ("Delivery", "deferred", "connection"),
        ("Expired", None, None),
    } <= kinds


def test_bookkeeping_lines_yield_nothing() -> None:
    lines, expected = golden("outcomes")
    with_records = {e["line"] for e in expected}
    quiet = [line for n, line in enumerate(lines, 1) if n not in with_records]
    assert any("reject: RCPT" in line for line in quiet)  # handled by the injector instead
    assert any(line.endswith(": removed") for line in quiet)
    assert any("(queue active)" in line for line in quiet)
    assert all(parse_line(line, NOW) is None for line in quiet)


LINE = (
    "{stamp} mx postfix/smtp[4839]: 4jbsxF6Z2HzJnfP: to=<a@example.org>, {orig}"
    "relay={relay}, {conn}delay=0.09, delays=0.02/0.04/0/0.02, dsn={dsn}, status={status} ({text})"
)


def line(**kw: str) -> str:
    values = {
        "stamp": "Nov 28 01:23:29",
        "orig": "",
        "relay": "mx.example.org[192.0.2.7]:25",
        "conn": "",
        "dsn": "2.0.0",
        "status": "sent",
        "text": "250 2.0.0 OK 1700000000 x",
    }
    values.update(kw)
    return LINE.format(**values)


def test_ipv6_relay_orig_to_and_conn_use() -> None:
    record = parse_line(
        line(
            relay="mx.example.org[2001:db8::25]:25",
            orig="orig_to=<A@Example.org>, ",
            conn="conn_use=3, ",
        ),
        NOW,
    )
    assert isinstance(record, Delivery)
    assert record.ip == "2001:db8::25"
    assert record.orig_rcpt == "A@Example.org"


def test_classic_timestamps_take_the_latest_year_not_in_the_future() -> None:
    new_year = datetime(2027, 1, 1, 0, 5, tzinfo=UTC)
    record = parse_line(line(stamp="Dec 31 23:59:58"), new_year)
    assert record is not None
    assert record.timestamp == datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC).timestamp()
    leap = parse_line(line(stamp="Feb 29 10:00:00"), datetime(2027, 3, 1, tzinfo=UTC))
    assert leap is not None
    assert leap.timestamp == datetime(2024, 2, 29, 10, tzinfo=UTC).timestamp()


def test_classic_timestamps_in_another_zone() -> None:
    cet = timezone(timedelta(hours=1))
    record = parse_line(line(stamp="Nov 28 02:23:29"), NOW, tz=cet)
    assert record is not None
    assert record.timestamp == datetime(2026, 11, 28, 1, 23, 29, tzinfo=UTC).timestamp()


def test_iso_timestamps_with_zone_and_fraction() -> None:
    text = line(stamp="2026-11-28T02:23:29.250000+01:00")
    record = parse_line(text, NOW)
    assert record is not None
    assert record.timestamp == datetime(2026, 11, 28, 1, 23, 29, 250000, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        line(status="deliverable"),  # an address verification probe
        line(stamp="2026-13-45T00:00:00+00:00"),
        "Nov 28 01:23:29 mx postfix/qmgr[1]: 4jbsxF6Z2HzJnfP: removed",
    ],
)
def test_lines_without_records(text: str) -> None:
    assert parse_line(text, NOW) is None


def test_reason_is_the_remote_reply() -> None:
    record = parse_line(
        line(
            dsn="5.7.1",
            status="bounced",
            text="host mx.example.org[192.0.2.7] refused to talk to me: "
            "554 5.7.1 Service unavailable; client [198.51.100.1] blocked using zen.spamhaus.org",
        ),
        NOW,
    )
    assert isinstance(record, Delivery)
    assert record.reason.startswith("554 5.7.1 Service unavailable")
    # A block list judges the sending host, not the message: "policy" (README, Bounce categories).
    assert rules.category(record.dsn, record.reason) == "policy"


def test_expired_message_line() -> None:
    record = parse_line(
        "Nov 28 01:23:34 mx postfix/qmgr[4832]: 4jbsxF6Z2HzJnfP: from=<bounce-x@b.example>, "
        "status=expired, returned to sender",
        NOW,
    )
    assert record == Expired(
        datetime(2026, 11, 28, 1, 23, 34, tzinfo=UTC).timestamp(),
        "4jbsxF6Z2HzJnfP",
        "bounce-x@b.example",
    )


@pytest.mark.parametrize(
    ("dsn", "text", "category", "kind"),
    [
        (
            "5.1.1",
            "550 5.1.1 <a@x>: Recipient address rejected: User unknown",
            "invalid-recipient",
            "hard",
        ),
        ("5.0.0", "550 No such user here", "invalid-recipient", "hard"),
        ("5.2.2", "552 5.2.2 Mailbox full", "mailbox-full", "hard"),
        (
            "5.0.0",
            "552 Requested mail action aborted: exceeded storage allocation",
            "mailbox-full",
            "hard",
        ),
        ("5.7.1", "550 5.7.1 Message rejected as spam", "spam-block", "hard"),
        (
            "5.7.1",
            "550 5.7.1 Unauthenticated email is not accepted due to DMARC policy",
            "policy",
            "hard",
        ),
        (
            "5.7.26",
            "550 5.7.26 This mail has been blocked because the sender is unauthenticated",
            "policy",
            "hard",
        ),
        ("5.1.10", "Domain example.org does not accept mail (nullMX)", "dns", "unroutable"),
        (
            "5.1.10",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            "invalid-recipient",
            "hard",
        ),
        (
            "5.4.4",
            "Host or domain name not found. Name service error for name=x type=MX",
            "dns",
            "unroutable",
        ),
        (
            "5.1.2",
            "550 5.1.2 <a@x>: Recipient address rejected: Host or domain name not found",
            "dns",
            "unroutable",
        ),
        ("5.4.6", "mail for example.org loops back to myself", "routing", "unroutable"),
        ("5.3.4", "552 5.3.4 Message size exceeds fixed limit", "message-size", "hard"),
        ("5.6.0", "554 5.6.0 Message content rejected", "content", "hard"),
        ("5.0.0", "554 Something else went wrong", "other", "hard"),
    ],
)
def test_permanent_failure_classes(dsn: str, text: str, category: str, kind: str) -> None:
    got = rules.category(dsn, text)
    assert got == category
    assert rules.permanent_type(got) == kind


@pytest.mark.parametrize(
    ("dsn", "text", "category"),
    [
        ("4.4.1", "connect to 192.0.2.7[192.0.2.7]:25: Connection refused", "connection"),
        (
            "4.4.2",
            "conversation with x[192.0.2.7] timed out while receiving the initial server greeting",
            "connection",
        ),
        ("4.2.1", "450 4.2.1 <a@x>: Mailbox temporarily unavailable", "mailbox-unavailable"),
        (
            "4.7.0",
            "421 4.7.0 Try again later, closing connection. (rate limited)",
            "rate-limited",
        ),
        (
            "4.2.2",
            "452 4.2.2 The email account that you tried to reach is over quota",
            "mailbox-full",
        ),
    ],
)
def test_temporary_failure_classes(dsn: str, text: str, category: str) -> None:
    assert rules.category(dsn, text) == category


def test_every_rule_names_a_known_category_and_compiles() -> None:
    known = set(rules.Category.__args__)  # type: ignore[attr-defined]
    for rule in rules.CATEGORY_RULES:
        assert rule.category in known
        assert isinstance(rule.pattern, re.Pattern)
