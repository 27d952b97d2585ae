"""MxServer as a real process, driven by smtplib like the MTAs of the Internet would: DSNs
(null sender), ARF reports, auto-replies, unsubscribe mail, relay attempts, oversize mail,
all to the tagged feedback addresses the Transformer mints (tests/mxmail.py)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common import suppression
from tests.helpers import (
    LOOPBACK,
    RedisServer,
    Service,
    running,
    stored_item,
    wait_for,
    write_configs,
)
from tests.integration.conftest import set_path
from tests.mxmail import (
    ABUSE,
    RP,
    arf,
    autoreply,
    dsn,
    events,
    original_headers,
    plain,
    register_stream,
    tag,
)


def mx_service(directory: Path, redis_port: int, **changes: Any) -> Service:
    def change(customer: dict[str, Any]) -> None:
        set_path(customer, "mxserver.hostname", "mx.test")
        for path, value in changes.items():
            set_path(customer, path.replace("__", "."), value)

    global_file, customer_file = write_configs(directory, redis_port, change)
    return Service("mxserver", global_file, customer_file, directory / "mxserver.log")


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Service]:
    with running(mx_service(tmp_path_factory.mktemp("mx"), redis_server.port)) as service:
        yield service


def deliver(
    service: Service, mail_from: str, rcpts: list[str], data: bytes, tls: bool = False
) -> tuple[int, bytes]:
    assert service.port is not None
    with smtplib.SMTP(LOOPBACK, service.port, local_hostname="sender.test", timeout=15) as smtp:
        smtp.ehlo()
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # MTAs do opportunistic TLS without checks
            smtp.starttls(context=context)
            smtp.ehlo()
        code, reply = smtp.mail(mail_from)
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = smtp.rcpt(rcpt)
            if code != 250:
                return code, reply
        return smtp.data(data)


ALICE = "alice@receiver.example"
NO_SUCH_USER = "550 5.1.1 <{}>: Recipient address rejected: User unknown"


def test_dsn_gives_one_event_for_the_tagged_recipient(mx: Service, queues: SyncRedis) -> None:
    register_stream(queues, "weekly")
    rp = tag("m1", ALICE, "weekly")
    report = dsn(
        rp,
        [(ALICE, "5.2.2", "552 5.2.2 Mailbox full"), ("carol@receiver.example", "5.1.1", "x")],
    )
    code, reply = deliver(mx, "", [rp], report, tls=True)
    assert code == 250, reply
    got = events(queues)
    # carol is not who the tag was minted for: no event about her.
    assert [(e["event"], e["uuid"], e["rcpt"], e["type"], e["category"]) for e in got] == [
        ("bounce", "m1", ALICE, "hard", "mailbox-full")
    ]
    assert got[0]["streamid"] == "weekly" and got[0]["id"] and got[0]["timestamp"] > 0
    # The same DSN again (a retrying sender): no second event.
    assert deliver(mx, "", [rp], report)[0] == 250
    assert len(events(queues)) == 1


def test_soft_and_delayed(mx: Service, queues: SyncRedis) -> None:
    soft = tag("m2", "dave@receiver.example")
    deliver(mx, "", [soft], dsn(soft, [("dave@receiver.example", "4.4.7", "expired")]))
    delayed = tag("m3", "erin@receiver.example")
    report = dsn(delayed, [("erin@receiver.example", "4.4.1", "no answer")])
    report = report.replace(b"Action: failed", b"Action: delayed")
    deliver(mx, "", [delayed], report)
    got = events(queues)
    assert [(e["uuid"], e["type"], e["rcpt"]) for e in got] == [
        ("m2", "soft", "dave@receiver.example")
    ]
    assert "streamid" not in got[0]  # minted without a stream id
    assert mx.metric("mxserver_received_delay_notice_total") >= 1


def test_text_bounce_autoreply_spam_report_and_unsubscribe(mx: Service, queues: SyncRedis) -> None:
    kate = "kate@receiver.example"
    rp = tag("m4", kate)
    text = (
        f"From: Mail Delivery System <Mailer-Daemon@exim.receiver.example>\r\nTo: {rp}\r\n"
        "Subject: Mail delivery failed: returning message to sender\r\n\r\n"
        "A message that you sent could not be delivered to one or more of its\r\n"
        "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
        f"  {kate}\r\n    {NO_SUCH_USER.format(kate)}\r\n"
    ).encode()
    deliver(mx, "", [rp], text)
    tina = "tina@receiver.example"
    deliver(mx, tina, [tag("m5", tina)], autoreply(tina, tag("m5", tina)))
    sam = "sam@isp.example"
    complaint = arf(ABUSE, original_headers(tag("m6", sam, "promo"), sam), sam)
    register_stream(queues, "promo")
    deliver(mx, "fbl@isp.example", [ABUSE], complaint)
    walt = "walt@receiver.example"
    unsub = tag("m7", walt, kind="unsub")
    deliver(mx, walt, [unsub], plain(walt, unsub))
    got = {e["event"] + ":" + e.get("type", ""): e for e in events(queues)}
    assert (got["bounce:hard"]["uuid"], got["bounce:hard"]["rcpt"]) == ("m4", kate)
    assert (got["bounce:autoreply"]["uuid"], got["bounce:autoreply"]["rcpt"]) == ("m5", tina)
    spam = got["spam-report:"]
    assert (spam["uuid"], spam["rcpt"], spam["email"], spam["streamid"]) == (
        "m6",
        sam,
        sam,
        "promo",
    )
    assert (got["unsubscribe:"]["uuid"], got["unsubscribe:"]["rcpt"]) == ("m7", walt)
    assert mx.metric("mxserver_received_unsubscribe_total") >= 1
    assert mx.metric("mxserver_received_spam_report_total") >= 1


def test_text_bounce_known_only_by_its_null_sender(mx: Service, queues: SyncRedis) -> None:
    # No daemon sender, no bounce subject, no DSN (au one net's, in the corpus): only the null
    # reverse-path (MAIL FROM:<>) says it is a report. Found by the closed loop
    # (bench.feedback): aiosmtpd passed "<>" on and this was kept as unclassified.
    ken = "ken@receiver.example"
    rp = tag("m8", ken)
    text = (
        f"From: no-reply@receiver.example\r\nTo: <{rp}>\r\nSubject: Notice\r\n\r\n"
        f"Your mail sent on: Thu, 29 Apr 2013 23:45:22 +0900\r\n"
        f"     Could not be delivered to: <{ken}>\r\n     As their mailbox is full.\r\n"
    ).encode()
    assert deliver(mx, "", [rp], text)[0] == 250
    got = [(e["uuid"], e["rcpt"], e["type"], e["category"]) for e in events(queues)]
    assert got == [("m8", ken, "hard", "mailbox-full")]


def test_yahoo_abuse_address_keeps_working(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    service = mx_service(
        tmp_path, redis_server.port, **{"mxserver__abuse__yahoo__to": "fbl@reports.example"}
    )
    rita = "rita@yahoo.example"
    with running(service):
        # Yahoo redacts the complainer: the tag in the quoted original still names the message.
        headers = original_headers(tag("m8", rita), "redacted@yahoo.example")
        code, _ = deliver(service, "feedbackloop@yahoo.example", ["fbl@reports.example"],
                          arf("fbl@reports.example", headers))  # fmt: skip
        assert code == 250
    (event,) = events(queues)
    assert (event["event"], event["uuid"]) == ("spam-report", "m8")
    assert "rcpt" not in event and "email" not in event


def test_postmaster_is_accepted_and_unclassified_is_stored(mx: Service, queues: SyncRedis) -> None:
    before = mx.metric("mxserver_received_unclassified_total")
    xena = "xena@receiver.example"
    code, _ = deliver(mx, xena, [f"PostMaster@{RP}"], plain(xena, f"postmaster@{RP}", "blue one"))
    assert code == 250
    assert events(queues) == []
    (stored,) = queues.lrange("MXSERVER-UNCLASSIFIED-UNTAGGED", 0, -1)
    item = stored_item(stored)
    assert queues.llen("MXSERVER-UNCLASSIFIED") == 0  # no tag: the untagged list only
    assert b"blue one" in item.payload
    assert mx.metric("mxserver_received_unclassified_total") == before + 1


def test_made_up_addresses_at_our_domain_are_refused(mx: Service, queues: SyncRedis) -> None:
    before = mx.metric("mxserver_refused_total", 'reason="bad-tag"')
    real = tag("m13", ALICE)
    forged = (
        real[: -len(RP) - 3] + ("a" if real[-len(RP) - 2] != "a" else "b") + real[-len(RP) - 2 :]
    )
    for address in (f"bounce-m13@{RP}", f"unsub-m13@{RP}", f"info@{RP}", forged):
        code, reply = deliver(mx, "", [address], b"x")
        assert (code, reply[:5]) == (550, b"5.1.1"), address
    assert mx.metric("mxserver_refused_total", 'reason="bad-tag"') == before + 4
    assert events(queues) == []


def test_never_a_relay(mx: Service, queues: SyncRedis) -> None:
    code, reply = deliver(mx, "spammer@evil.example", ["victim@elsewhere.example"], b"x")
    assert code == 550 and reply.startswith(b"5.7.1")
    assert mx.metric("mxserver_refused_total", 'reason="relay"') >= 1


def test_oversize_mail_is_refused(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    with running(
        mx_service(tmp_path, redis_server.port, **{"mxserver__max-message-size": 4096})
    ) as service:
        big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100
        code, reply = deliver(service, "", [tag("m10", ALICE)], big)
        assert code == 552 and reply.startswith(b"5.3.4")
    assert events(queues) == []


def test_rate_limit(tmp_path: Path, redis_server: RedisServer, queues: SyncRedis) -> None:
    service = mx_service(tmp_path, redis_server.port, **{"mxserver__rate-limit": {"messages": 2}})
    with running(service):
        unsub = tag("m11", "a@b.example", kind="unsub")
        data = plain("a@b.example", unsub)
        assert deliver(service, "a@b.example", [unsub], data)[0] == 250
        assert deliver(service, "a@b.example", [unsub], data)[0] == 250
        # Refused at the DATA command, before 354: none of the message is read.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            deliver(service, "a@b.example", [unsub], data)
        assert refused.value.smtp_code == 450
        error = refused.value.smtp_error
        assert isinstance(error, bytes) and error.startswith(b"4.7.1")


def test_redis_down_means_451(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    service = mx_service(tmp_path / "cfg", redis.port)
    try:
        with running(service):
            redis.stop()
            wait_for(lambda: service.readyz()[0] == 503, what="readyz to report redis down")
            rp = tag("m12", ALICE)
            code, reply = deliver(service, "", [rp], dsn(rp, [(ALICE, "5.1.1", "gone")]))
            assert code == 451 and reply.startswith(b"4.3.0")
    finally:
        redis.stop()


def test_refuses_to_start_without_the_feedback_secret(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    def change(customer: dict[str, Any]) -> None:
        customer["common-config"].pop("feedback-secret")

    global_file, customer_file = write_configs(tmp_path, redis_server.port, change)
    run = Service("mxserver", global_file, customer_file, tmp_path / "mx.log").run_to_exit()
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "common-config.feedback-secret" in run.stderr


def test_each_recipient_of_a_message_can_unsubscribe_by_mail(
    mx: Service, queues: SyncRedis
) -> None:
    for person in ("ann@receiver.example", "ben@receiver.example", "ann@receiver.example"):
        unsub = tag("m14", person, kind="unsub")
        assert deliver(mx, person, [unsub], plain(person, unsub))[0] == 250
    got = events(queues)
    assert [(e["event"], e["uuid"], e["rcpt"]) for e in got] == [
        ("unsubscribe", "m14", "ann@receiver.example"),
        ("unsubscribe", "m14", "ben@receiver.example"),
    ]
    # HttpReceiver's one-click markers are set: the provider's POST for a person gives no
    # second event (per recipient; per message for tokens that name none), and only theirs.
    from manycore_common.unsubscribe import once_marker

    assert queues.exists("unsubscribed:m14")
    assert queues.exists(once_marker("m14", "ann@receiver.example"))
    assert queues.exists(once_marker("m14", "ben@receiver.example"))
    assert not queues.exists(once_marker("m14", "cat@receiver.example"))


def test_reports_suppress_the_recipient_with_their_event(mx: Service, queues: SyncRedis) -> None:
    """A user-unknown DSN, an ARF complaint and an unsubscribe put their recipient on the
    suppression list of the From domain whose return-path domain they came back to
    (example.com for bounce.example.com); a soft bounce does not."""
    gone, sam, walt, soft = (f"{n}@receiver.example" for n in ("gone", "sam", "walt", "soft"))
    rp = tag("s1", gone)
    deliver(mx, "", [rp], dsn(rp, [(gone, "5.1.1", NO_SUCH_USER.format(gone))]))
    deliver(mx, "fbl@isp.example", [ABUSE], arf(ABUSE, original_headers(tag("s2", sam), sam), sam))
    unsub = tag("s3", walt, kind="unsub")
    deliver(mx, walt, [unsub], plain(walt, unsub))
    rp = tag("s4", soft)
    deliver(mx, "", [rp], dsn(rp, [(soft, "4.2.2", "452 4.2.2 Mailbox full")]))
    got = {e["rcpt"]: e for e in events(queues)}
    assert set(got) == {gone, sam, walt, soft}
    wait_for(lambda: bool(queues.hgetall(suppression.size_key())), what="suppression entries")
    entries = {}
    for address in (gone, sam, walt, soft):
        raw = queues.hget(suppression.bucket_key("example.com", address), address)
        entries[address] = suppression.unpack(raw) if isinstance(raw, bytes) else None
    assert entries[soft] is None
    reasons = {a: (e.reason, e.uuid, e.source) for a, e in entries.items() if e is not None}
    assert reasons == {
        gone: ("hard-bounce", "s1", got[gone]["id"][:16]),
        sam: ("spam-report", "s2", got[sam]["id"][:16]),
        walt: ("unsubscribe", "s3", got[walt]["id"][:16]),
    }
    # Only the From domain of that return path, not the other configured one.
    assert queues.hgetall(suppression.size_key()) == {b"example.com": b"3"}
