"""The Receiver as a real process, driven by Python's smtplib over STARTTLS and AUTH."""

from __future__ import annotations

import shutil
import signal
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from manycore_common import item as item_format
from tests.helpers import (
    LOOPBACK,
    RedisServer,
    Service,
    running,
    stored_item,
    wait_for,
    write_configs,
)
from tests.integration.conftest import build_message, set_path

P0, P1 = "IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1"


def receiver_service(
    directory: Path, redis_port: int, tls_files: tuple[Path, Path], **changes: Any
) -> Service:
    def change(customer: dict[str, Any]) -> None:
        # Generous throttling so that tests of wrong passwords do not lock out the others.
        set_path(customer, "receiver.auth-throttle", {"max-failures": 1000, "delay-seconds": 0})
        for path, value in changes.items():
            set_path(customer, path.replace("__", "."), value)

    global_file, customer_file = write_configs(directory, redis_port, change)
    shutil.copy(tls_files[0], directory / "receiver_cert.pem")
    shutil.copy(tls_files[1], directory / "receiver_key.pem")
    return Service("receiver", global_file, customer_file, directory / "receiver.log")


@pytest.fixture(scope="module")
def receiver(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
) -> Iterator[Service]:
    service = receiver_service(tmp_path_factory.mktemp("rcv"), redis_server.port, tls_files)
    with running(service):
        yield service


def connect(service: Service, context: ssl.SSLContext, login: bool = True) -> smtplib.SMTP:
    # local_hostname avoids smtplib's getfqdn() (a DNS lookup).
    assert service.port is not None
    smtp = smtplib.SMTP(LOOPBACK, service.port, local_hostname="localhost", timeout=15)
    smtp.ehlo()
    smtp.starttls(context=context)
    smtp.ehlo()
    if login:
        smtp.login("apa", "banan")
    return smtp


def auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would also try LOGIN after a failure)."""
    smtp.user, smtp.password = user, password
    return smtp.auth("PLAIN", smtp.auth_plain)


def send(service: Service, context: ssl.SSLContext, data: bytes) -> tuple[int, bytes]:
    with connect(service, context) as smtp:
        smtp.mail("anything@example.com")
        smtp.rcpt("ignored@example.net")
        return smtp.data(data)


def queued(client: SyncRedis, queue: str) -> list[item_format.Item]:
    return [stored_item(raw) for raw in client.lrange(queue, 0, -1)]


def test_messages_land_byte_for_byte_by_priority(
    receiver: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    high = build_message("high1", "0", stream_id="spring-sale")
    default = build_message("dflt1", None)
    low = build_message("low1", "1")
    for data in (high, default, low):
        code, reply = send(receiver, client_tls, data)
        assert code == 250, reply
    p0, p1 = queued(queues, P0), queued(queues, P1)
    assert [i.payload for i in p0] == [high]
    assert sorted(i.payload for i in p1) == sorted([default, low])
    item = p0[0]
    assert item.uuid == "high1"
    assert item.stream_id == "spring-sale"
    assert item.header["priority"] == 0
    assert item.header["rcpts"] == ["alice@example.net", "bob@example.org", "carol@example.org"]
    assert item.header["source"] == "smtp"
    assert item.attempts == 0


def test_a_hyphenated_rfc4122_uuid_is_accepted(
    receiver: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    uuid = "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c"
    code, reply = send(receiver, client_tls, build_message(uuid))
    assert code == 250, reply
    assert [i.uuid for i in queued(queues, P1)] == [uuid]


def test_auth_login_mechanism(
    receiver: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    with connect(receiver, client_tls, login=False) as smtp:
        smtp.user, smtp.password = "citron", "dadel"
        code, _ = smtp.auth("LOGIN", smtp.auth_login)
        assert code == 235
        smtp.sendmail("x@example.com", ["y@example.net"], build_message("viaLogin".lower()))
    assert len(queued(queues, P1)) == 1


def test_plaintext_auth_is_refused(receiver: Service) -> None:
    assert receiver.port is not None
    with smtplib.SMTP(LOOPBACK, receiver.port, local_hostname="localhost", timeout=10) as smtp:
        smtp.ehlo()
        assert "starttls" in smtp.esmtp_features
        code, reply = smtp.docmd("AUTH", "PLAIN AGFwYQBiYW5hbg==")
        assert code == 530
        assert b"5.7.0" in reply and b"STARTTLS" in reply


def test_mail_without_auth_is_refused(receiver: Service, client_tls: ssl.SSLContext) -> None:
    with connect(receiver, client_tls, login=False) as smtp:
        code, reply = smtp.mail("x@example.com")
        assert code == 530 and b"5.7.0" in reply


def test_wrong_password_is_refused(receiver: Service, client_tls: ssl.SSLContext) -> None:
    with connect(receiver, client_tls, login=False) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            auth_plain(smtp, "apa", "wrong")
        assert failure.value.smtp_code == 535
        assert b"5.7.8" in failure.value.smtp_error
    with (
        connect(receiver, client_tls, login=False) as smtp,
        pytest.raises(smtplib.SMTPAuthenticationError),
    ):
        smtp.login("nobody", "banan")


def test_ehlo_advertises_what_we_do(receiver: Service, client_tls: ssl.SSLContext) -> None:
    with connect(receiver, client_tls, login=False) as smtp:
        features = smtp.esmtp_features
        assert "enhancedstatuscodes" in features
        assert "auth" in features and "PLAIN" in features["auth"] and "LOGIN" in features["auth"]
        assert features["size"] == str(26214400)
        assert "smtputf8" in features


BAD_INPUTS = [
    ("missing-uuid", build_message(None), 550, "5.6.0", "Missing X-Uuid"),
    ("bad-uuid", build_message("ABC-123"), 550, "5.6.0", "Invalid X-Uuid"),
    ("bad-uuid", build_message("a" * 37), 550, "5.6.0", "Invalid X-Uuid"),
    ("bad-uuid", build_message("-abc"), 550, "5.6.0", "1 to 36 characters of a-z, 0-9 and '-'"),
    ("bad-priority", build_message("u1", "3"), 550, "5.6.0", "X-Priority"),
    ("bad-stream-id", build_message("u1", stream_id="a:b"), 550, "5.6.0", "X-Stream-Id"),
    ("bad-from", build_message("u1", sender="no address"), 550, "5.1.7", "From"),
    (
        "no-recipients",
        build_message("u1", to="undisclosed-recipients:;", cc=None),
        550,
        "5.1.3",
        "No recipient",
    ),
    ("bad-recipient", build_message("u1", to="alice@", cc=None), 550, "5.1.3", "Invalid recipient"),
    (
        "bad-headers",
        build_message("u1", extra_headers=["X-Uuid: again"]),
        550,
        "5.6.0",
        "appears 2 times",
    ),
]


@pytest.mark.parametrize(("reason", "data", "code", "enhanced", "text"), BAD_INPUTS)
def test_bad_input_gets_its_own_reply_and_is_counted(
    receiver: Service,
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
    reason: str,
    data: bytes,
    code: int,
    enhanced: str,
    text: str,
) -> None:
    before = receiver.metric("nbr_dropped_emails_total", f'reason="{reason}"')
    got_code, reply = send(receiver, client_tls, data)
    assert got_code == code
    assert reply.startswith(enhanced.encode()), reply
    assert text.encode() in reply
    assert receiver.metric("nbr_dropped_emails_total", f'reason="{reason}"') == before + 1
    assert queues.llen(P0) == 0 and queues.llen(P1) == 0


def test_oversize_message_is_refused(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
) -> None:
    service = receiver_service(
        tmp_path, redis_server.port, tls_files, **{"receiver__max-message-size": 2000}
    )
    with running(service):
        # Declared in advance with SIZE=: refused at MAIL FROM.
        with connect(service, client_tls) as smtp:
            code, reply = smtp.mail("x@example.com", ["SIZE=5000"])
            assert code == 552 and reply.startswith(b"5.3.4")
        # Not declared: refused after the data, which is discarded as it arrives.
        big = build_message("big1", body="x" * 70 + ("\r\n" + "y" * 70) * 60)
        code, reply = send(service, client_tls, big)
        assert code == 552 and reply.startswith(b"5.3.4"), reply
        assert service.metric("nbr_dropped_emails_total", 'reason="too-large"') == 2
    assert queues.llen(P1) == 0


def test_metrics_count_enqueued_and_recipients(
    receiver: Service, client_tls: ssl.SSLContext, queues: SyncRedis
) -> None:
    enqueued = receiver.metric("nbr_emails_enqueued_total")
    recipients = receiver.metric("nbr_recipients_total")
    send(receiver, client_tls, build_message("m1", to="a@example.net, b@example.net", cc=None))
    assert receiver.metric("nbr_emails_enqueued_total") == enqueued + 1
    assert receiver.metric("nbr_recipients_total") == recipients + 2
    text = receiver.metrics()
    assert "nbr_emails_enqueued_created" not in text


def test_failed_logins_are_throttled(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
) -> None:
    service = receiver_service(
        tmp_path,
        redis_server.port,
        tls_files,
        **{
            "receiver__auth-throttle": {
                "max-failures": 3,
                "lockout-seconds": 60,
                "delay-seconds": 0.05,
            }
        },
    )
    with running(service), connect(service, client_tls, login=False) as smtp:
        for _ in range(3):
            with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
                auth_plain(smtp, "apa", "wrong")
            assert failure.value.smtp_code == 535
        # Locked out now: even the right password is refused, with a temporary code.
        code, reply = smtp.docmd("AUTH", "PLAIN AGFwYQBiYW5hbg==")
        assert code == 454 and reply.startswith(b"4.7.0")
        assert service.metric("receiver_auth_failures_total", 'reason="locked-out"') == 1
        assert service.metric("receiver_auth_failures_total", 'reason="bad-credentials"') == 3


def test_redis_down_means_451_and_nothing_half_accepted(
    tmp_path: Path, tls_files: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    service = receiver_service(tmp_path / "cfg", redis.port, tls_files)
    try:
        with running(service):
            assert send(service, client_tls, build_message("before"))[0] == 250
            redis.stop()
            wait_for(lambda: service.readyz()[0] == 503, what="readyz to report redis down")
            assert service.readyz()[1]["failing"] == ["redis"]
            code, reply = send(service, client_tls, build_message("during"))
            assert code == 451 and reply.startswith(b"4.3.0"), reply
            assert service.metric("nbr_dropped_emails_total", 'reason="redis-unavailable"') == 1
            redis.start()
            wait_for(service.ready, what="readyz to recover")
            assert send(service, client_tls, build_message("after"))[0] == 250
            assert service.live()
        client = SyncRedis(host=LOOPBACK, port=redis.port)
        # Redis ran without persistence: only what was sent after the restart is there.
        assert [stored_item(r).uuid for r in client.lrange(P1, 0, -1)] == ["after"]
        client.close()
    finally:
        redis.stop()


def test_queue_above_high_water_mark_means_451(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
) -> None:
    service = receiver_service(tmp_path, redis_server.port, tls_files)
    global_file = service.global_file
    global_file.write_text(
        global_file.read_text().replace("high-water-mark: 100000", "high-water-mark: 1")
    )
    with running(service):
        assert send(service, client_tls, build_message("first"))[0] == 250
        code, reply = send(service, client_tls, build_message("second"))
        assert code == 451 and reply.startswith(b"4.3.0") and b"full" in reply
    assert queues.llen(P1) == 1


def test_sigterm_stops_cleanly(
    tmp_path: Path, redis_server: RedisServer, tls_files: tuple[Path, Path]
) -> None:
    service = receiver_service(tmp_path, redis_server.port, tls_files).start()
    assert service.stop(signal.SIGTERM) == 0
    log = service.log.read_text()
    assert '"msg": "stopped"' in log
    assert "banan" not in log  # no password in the log, ever


def test_message_in_progress_at_stop_is_not_acknowledged(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
    queues: SyncRedis,
) -> None:
    """SIGTERM while a client is sending DATA: the message is not acknowledged with 250
    (the client will send it again) and nothing is queued."""
    service = receiver_service(tmp_path, redis_server.port, tls_files).start()
    smtp = connect(service, client_tls)
    smtp.mail("x@example.com")
    smtp.rcpt("y@example.net")
    code, _ = smtp.docmd("DATA")
    assert code == 354
    smtp.send(build_message("atstop").replace(b"\r\n.", b"\r\n.."))
    service.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    wait_for(lambda: not service.live(), what="receiver to close its listeners")
    try:
        smtp.send(b".\r\n")
        code, _ = smtp.getreply()
    except (smtplib.SMTPServerDisconnected, OSError):
        code = 0
    assert code in (0, 421)
    assert service.process.wait(30) == 0  # type: ignore[union-attr]
    assert queues.llen(P1) == 0
