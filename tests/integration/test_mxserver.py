"""MxServer as a real process, driven by smtplib like the MTAs of the Internet would: DSNs
(null sender), ARF reports, auto-replies, unsubscribe mail, relay attempts, oversize mail."""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common import item as item_format
from tests.helpers import LOOPBACK, RedisServer, Service, running, wait_for, write_configs
from tests.integration.conftest import set_path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bounces"
RP = "bounce.example.com"  # the return-path domain of the example config


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


def fixture(name: str, uuid_from: str, uuid_to: str) -> bytes:
    """A corpus message re-addressed to the example config's return-path domain."""
    data = (FIXTURES / name).read_bytes().replace(b"rp.example.com", RP.encode())
    return data.replace(uuid_from.encode(), uuid_to.encode()).replace(b"\n", b"\r\n")


def deliver(
    service: Service, mail_from: str, rcpts: list[str], data: bytes, tls: bool = False
) -> tuple[int, bytes]:
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


def events(client: SyncRedis) -> list[dict[str, Any]]:
    return [
        json.loads(item_format.decode(raw).payload)
        for raw in reversed(client.lrange("EVENT_QUEUE", 0, -1))
    ]


def test_dsn_from_the_null_sender_becomes_one_event_per_failed_recipient(
    mx: Service, queues: SyncRedis
) -> None:
    code, reply = deliver(
        mx, "", [f"bounce-m1@{RP}"], fixture("dsn_multi.eml", "u1002", "m1"), tls=True
    )
    assert code == 250, reply
    got = events(queues)
    assert [(e["event"], e["uuid"], e["rcpt"], e["type"], e["category"]) for e in got] == [
        ("bounce", "m1", "alice@receiver.example", "hard", "mailbox-full"),
        ("bounce", "m1", "carol@receiver.example", "hard", "invalid-recipient"),
    ]
    assert all(e["id"] and e["timestamp"] > 0 and e["reason"] for e in got)
    # The same DSN again (a retrying sender): no second event.
    assert deliver(mx, "", [f"bounce-m1@{RP}"], fixture("dsn_multi.eml", "u1002", "m1"))[0] == 250
    assert len(events(queues)) == 2


def test_soft_and_delayed(mx: Service, queues: SyncRedis) -> None:
    deliver(mx, "", [f"bounce-m2@{RP}"], fixture("dsn_expired_4xx.eml", "u1003", "m2"))
    deliver(mx, "", [f"bounce-m3@{RP}"], fixture("dsn_delayed.eml", "u1004", "m3"))
    got = events(queues)
    assert [(e["uuid"], e["type"]) for e in got] == [("m2", "soft")]
    assert mx.metric("mxserver_received_delay_notice_total") >= 1


def test_text_bounce_autoreply_spam_report_and_unsubscribe(mx: Service, queues: SyncRedis) -> None:
    deliver(mx, "", [f"bounce-m4@{RP}"], fixture("exim.eml", "u1009", "m4"))
    deliver(
        mx,
        "tina@receiver.example",
        [f"bounce-m5@{RP}"],
        fixture("autoreply_rfc3834.eml", "u1018", "m5"),
    )
    deliver(mx, "fbl@isp.example", [f"abuse@{RP}"], fixture("arf_generic.eml", "u1017", "m6"))
    deliver(
        mx, "walt@receiver.example", [f"unsub-m7@{RP}"], fixture("unsubscribe.eml", "u1021", "m7")
    )
    got = {e["event"] + ":" + e.get("type", ""): e for e in events(queues)}
    assert got["bounce:hard"]["uuid"] == "m4"
    assert got["bounce:hard"]["rcpt"] == "kate@receiver.example"
    assert got["bounce:autoreply"]["uuid"] == "m5"
    assert got["bounce:autoreply"]["rcpt"] == "tina@receiver.example"
    assert got["spam-report:"]["uuid"] == "m6" and got["spam-report:"]["email"] == "sam@isp.example"
    assert got["unsubscribe:"]["uuid"] == "m7"
    assert mx.metric("mxserver_received_unsubscribe_total") >= 1
    assert mx.metric("mxserver_received_spam_report_total") >= 1


def test_yahoo_abuse_address_keeps_working(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    service = mx_service(
        tmp_path, redis_server.port, **{"mxserver__abuse__yahoo__to": "fbl@reports.example"}
    )
    with running(service):
        code, _ = deliver(
            service,
            "feedbackloop@yahoo.example",
            ["fbl@reports.example"],
            fixture("arf_yahoo.eml", "u1016", "m8"),
        )
        assert code == 250
    (event,) = events(queues)
    assert (event["event"], event["uuid"], event["email"]) == (
        "spam-report",
        "m8",
        "rita@yahoo.example",
    )


def test_unclassified_is_stored_not_an_event(mx: Service, queues: SyncRedis) -> None:
    before = mx.metric("mxserver_received_unclassified_total")
    deliver(
        mx, "xena@receiver.example", [f"bounce-m9@{RP}"], fixture("human_reply.eml", "u1022", "m9")
    )
    assert events(queues) == []
    (stored,) = queues.lrange("MXSERVER-UNCLASSIFIED", 0, -1)
    item = item_format.decode(stored)
    assert b"blue one" in item.payload and item.uuid == "m9"
    assert mx.metric("mxserver_received_unclassified_total") == before + 1


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
        code, reply = deliver(service, "", [f"bounce-m10@{RP}"], big)
        assert code == 552 and reply.startswith(b"5.3.4")
    assert events(queues) == []


def test_rate_limit(tmp_path: Path, redis_server: RedisServer, queues: SyncRedis) -> None:
    service = mx_service(tmp_path, redis_server.port, **{"mxserver__rate-limit": {"messages": 2}})
    with running(service):
        data = fixture("unsubscribe.eml", "u1021", "m11")
        assert deliver(service, "a@b.example", [f"unsub-m11@{RP}"], data)[0] == 250
        assert deliver(service, "a@b.example", [f"unsub-m11@{RP}"], data)[0] == 250
        code, reply = deliver(service, "a@b.example", [f"unsub-m11@{RP}"], data)
        assert code == 450 and reply.startswith(b"4.7.1")


def test_redis_down_means_451(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    service = mx_service(tmp_path / "cfg", redis.port)
    try:
        with running(service):
            redis.stop()
            wait_for(lambda: service.readyz()[0] == 503, what="readyz to report redis down")
            code, reply = deliver(
                service, "", [f"bounce-m12@{RP}"], fixture("exim.eml", "u1009", "m12")
            )
            assert code == 451 and reply.startswith(b"4.3.0")
    finally:
        redis.stop()
