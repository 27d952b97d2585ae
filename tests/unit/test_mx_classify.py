"""MxServer's classification against bounce, report and reply messages in the formats real
MTAs send (tests/fixtures/bounces, each with its expected outcome), and the contract the
service codes against (kinds, one Failure per failed recipient, categories)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from manycore_common.bounce_rules import CATEGORIES, category, permanent_type
from manycore_mxserver.classify import Envelope, Settings, classify, is_ours

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((FIXTURES / "expected.yaml").read_text())
SETTINGS = Settings(
    own_mtas=frozenset({"mxserver.example.com"}), abuse_addresses=frozenset({"abuse@example.com"})
)
TAG = "b0123abcd.abcdefghijklmnopqrstuvwxyz@rp.example.com"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus(name: str) -> None:
    want = EXPECTED[name]
    data = (FIXTURES / name).read_bytes()
    result = classify(Envelope(want["mail_from"], (want["rcpt"],)), data, SETTINGS)
    assert result.kind == want["kind"], result
    if "email" in want:
        assert result.email == want["email"]
    got = [(f.rcpt, f.permanent) for f in result.failures]
    assert got == [(rcpt, permanent) for rcpt, permanent, *_ in want.get("failures", [])]
    for failure, (_, _permanent, kind, cat) in zip(
        result.failures, want.get("failures", []), strict=True
    ):
        assert failure.category in CATEGORIES
        assert failure.reason
        if cat is not None:
            assert failure.category == cat, failure
        if kind is not None:
            got_kind = permanent_type(category(failure.status, failure.reason))
            assert (got_kind if failure.permanent else "soft") == kind, failure


def _dsn(groups: list[str], text: str = "Delivery failed.") -> bytes:
    blocks = "\n".join(groups)
    return (
        "From: MAILER-DAEMON@mx.receiver.example\nTo: " + TAG + "\nSubject: Undelivered Mail\n"
        "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
        'boundary="B"\n\n--B\nContent-Type: text/plain\n\n' + text + "\n\n--B\n"
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.receiver.example\n\n"
        + blocks
        + "\n--B--\n"
    ).encode()


def _group(rcpt: str, action: str, status: str, diag: str = "") -> str:
    lines = [f"Final-Recipient: rfc822; {rcpt}", f"Action: {action}", f"Status: {status}"]
    if diag:
        lines.append(f"Diagnostic-Code: smtp; {diag}")
    return "\n".join(lines) + "\n"


def test_one_failure_per_failed_recipient_with_its_own_category() -> None:
    data = _dsn(
        [
            _group("a@x.example", "failed", "5.1.1", "550 5.1.1 User unknown"),
            _group("b@x.example", "delivered", "2.0.0"),
            _group("c@x.example", "failed", "5.2.2", "552 5.2.2 Mailbox full"),
            _group("d@x.example", "failed", "5.7.1", "550 5.7.1 Message rejected as spam"),
            _group(TAG, "failed", "5.1.1"),
        ]
    )
    result = classify(Envelope("", (TAG,)), data, SETTINGS)
    assert result.kind == "bounce"
    assert [(f.rcpt, f.permanent, f.category) for f in result.failures] == [
        ("a@x.example", True, "invalid-recipient"),
        ("c@x.example", True, "mailbox-full"),
        ("d@x.example", True, "spam-block"),
    ]


def test_a_delay_notice_is_never_a_permanent_failure() -> None:
    data = _dsn([_group("a@x.example", "delayed", "5.1.1", "550 5.1.1 odd but delayed")])
    result = classify(Envelope("", (TAG,)), data, SETTINGS)
    assert result.kind == "delayed"
    assert [f.permanent for f in result.failures] == [False]


def _qmail(ending: str) -> bytes:
    return (
        "From: MAILER-DAEMON@q.example\r\nSubject: failure notice\r\n\r\n"
        "Hi. This is the qmail-send program at q.example.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\r\n"
        "<a@x.example>:\r\nConnected to 192.0.2.1 but sender was rejected.\r\n"
        "Remote host said: 421 4.7.0 Messages temporarily deferred due to volume\r\n"
        f"{ending}\r\n"
    ).encode()


def test_a_report_that_gave_up_is_a_bounce_whatever_temporary_words_it_quotes() -> None:
    # Found by the closed loop (bench.feedback): read as a delay notice, it gave no event.
    final = classify(
        Envelope("", (TAG,)),
        _qmail("I'm not going to try again; this message has been in the queue too long."),
        SETTINGS,
    )
    assert final.kind == "bounce"
    assert [(f.rcpt, f.permanent) for f in final.failures] == [("a@x.example", False)]
    retrying = classify(Envelope("", (TAG,)), _qmail("I'll keep trying."), SETTINGS)
    assert retrying.kind == "delayed"


def test_a_mailer_daemon_message_is_never_an_autoreply() -> None:
    # 1&1 sends its bounces with Auto-Submitted: auto-replied; one whose failure cannot be
    # read gave an autoreply event (the closed loop, bench.feedback): now it is kept.
    head = "Auto-Submitted: auto-replied\r\n"
    daemon = (
        f"From: Mail Delivery System <mailer-daemon@kundenserver.example>\r\n{head}"
        "Subject: Mail delivery failed: returning message to sender\r\n\r\n"
        "Something went wrong.\r\n"
    ).encode()
    assert classify(Envelope("", (TAG,)), daemon, SETTINGS).kind == "unclassified"
    # A reply that quotes a subject with bounce words is still an auto-reply.
    reply = (
        f"From: ann@x.example\r\n{head}Subject: Automatic reply: Order rejected\r\n\r\n"
        "I am away until Monday.\r\n"
    ).encode()
    assert classify(Envelope("", (TAG,)), reply, SETTINGS).kind == "autoreply"


def test_global_delivery_status_rfc6533() -> None:
    data = _dsn([_group("josé@x.example", "failed", "5.1.1", "550 5.1.1 unknown")]).replace(
        b"message/delivery-status", b"message/global-delivery-status"
    )
    result = classify(Envelope("", (TAG,)), data, SETTINGS)
    assert [(f.rcpt, f.category) for f in result.failures] == [
        ("josé@x.example", "invalid-recipient")
    ]


def test_failures_are_capped() -> None:
    groups = [_group(f"u{i}@x.example", "failed", "5.1.1") for i in range(300)]
    result = classify(Envelope("", (TAG,)), _dsn(groups), Settings(max_failures=50))
    assert len(result.failures) == 50


def test_reason_without_diagnostic_comes_from_the_text() -> None:
    text = "Your message to a@x.example couldn't be delivered.\nThe mailbox is full."
    data = _dsn([_group("a@x.example", "failed", "5.0.0")], text)
    (failure,) = classify(Envelope("", (TAG,)), data, SETTINGS).failures
    assert failure.category == "mailbox-full" and "full" in failure.reason


def test_own_addresses_are_never_failures() -> None:
    envelope = Envelope("", ("other@rp.example.com",))
    assert is_ours(TAG, envelope)
    assert is_ours("OTHER@rp.example.com", envelope)
    assert is_ours("MAILER-DAEMON@x.example", envelope)
    assert not is_ours("alice@x.example", envelope)


def test_autoreply_with_bounce_like_wording_stays_an_autoreply() -> None:
    data = (
        b"From: Anna <anna@corp.example>\nTo: " + TAG.encode() + b"\n"
        b"Subject: =?utf-8?b?6Ieq5YuV5b+c562U?=\nAuto-Submitted: auto-replied\n\n"
        b"I am away. Your message could not be delivered to me before 3 May.\n"
    )
    result = classify(Envelope("", (TAG,)), data, SETTINGS)
    assert (result.kind, result.email) == ("autoreply", "anna@corp.example")


@settings(max_examples=200)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    classify(Envelope("", (TAG,)), data, SETTINGS)


@pytest.mark.parametrize(
    ("headers", "subject"),
    [
        ("X-Autoreply: yes", "Re: Your order"),  # Apple iCloud, Yahoo
        ("Auto-Submitted: auto-replied", "Vacation reply"),  # Gmail vacation responder
        ("X-Auto-Response-Suppress: All", "Automatic reply: Your order"),  # Exchange OOF
        ("Precedence: auto_reply", "Out of Office"),
        ("X-Mailer: x", "Abwesenheitsnotiz: Ihre Bestellung"),
        ("X-Mailer: x", "=?utf-8?q?R=C3=A9ponse_automatique=3A_commande?="),
        ("X-Mailer: x", "=?utf-8?q?Respuesta_autom=C3=A1tica?="),
        ("X-Mailer: x", "=?iso-2022-jp?b?GyRCPCtGMDF+RXobKEI=?="),  # 自動応答
    ],
)
def test_vacation_formats_are_autoreplies(headers: str, subject: str) -> None:
    data = (
        f"From: Anna <anna@corp.example>\nTo: {TAG}\nSubject: {subject}\n{headers}\n\n"
        "I am out of the office until Monday.\n"
    ).encode()
    result = classify(Envelope("", (TAG,)), data, SETTINGS)
    assert (result.kind, result.email) == ("autoreply", "anna@corp.example")


def test_a_text_bounce_that_gave_up_is_expired_not_permanent() -> None:
    data = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example>\nTo: " + TAG + "\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        "X-Failed-Recipients: bob@far.example, eve@far.example\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        "  bob@far.example\n    retry timeout exceeded\n\n"
        "  eve@far.example\n    SMTP error from remote mail server after RCPT TO:<eve@far.example>:"
        "\n"
        "    550 5.1.1 <eve@far.example>: Recipient address rejected: User unknown\n"
    ).encode()
    result = classify(Envelope("", (TAG,)), data, SETTINGS)
    assert result.kind == "bounce"
    assert [(f.rcpt, f.permanent, f.category) for f in result.failures] == [
        ("bob@far.example", False, "expired"),
        ("eve@far.example", True, "invalid-recipient"),
    ]


def test_dsn_recipient_is_the_original_recipient() -> None:
    group = _group("alias@x.example", "failed", "5.2.2", "552 5.2.2 Over quota").replace(
        "Final-Recipient: rfc822; alias@x.example",
        "Final-Recipient: rfc822; mailbox@store.x.example\n"
        "Original-Recipient: rfc822;alias@x.example",
    )
    (failure,) = classify(Envelope("", (TAG,)), _dsn([group]), SETTINGS).failures
    assert (failure.rcpt, failure.final_rcpt, failure.category) == (
        "alias@x.example",
        "mailbox@store.x.example",
        "mailbox-full",
    )


@pytest.mark.parametrize(
    "data",
    [
        # 8-bit octets with a charset parameter holding a NUL (the email package raises).
        b'From: MAILER-DAEMON@x.example\nContent-Type: text/plain; charset="a\x00b"\n\n\xe9\xe9\n',
        # An RFC 2047 word that is no base64, and one with a charset that is no charset.
        b"From: a@x.example\nSubject: =?utf-8?b?####?=\n\nhi\n",
        b"From: a@x.example\nSubject: =?x\x00y?q?hi?=\n\nhi\n",
        # 8-bit octets in header fields flufl.bounce's detectors read as strings.
        b"From: \xff\xfe MAILER-DAEMON@x.example\nSubject: Undelivered \xe9\n\n"
        b"<a@b.example>: 550 x\n",
    ],
)
def test_malformed_messages_found_by_fuzzing_classify(data: bytes) -> None:
    result = classify(Envelope("", (TAG,)), data, SETTINGS)
    assert not result.note.startswith("malformed"), result
