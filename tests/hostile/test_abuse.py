"""Abuse of the public doors, against the real services over real sockets: slow-loris clients,
password guessing from many connections, relay attempts without AUTH, the private Postfix's
listening addresses, and secrets leaking into logs, metrics, Redis or config errors.

Checks that exist elsewhere are not repeated here: AUTH before STARTTLS and MAIL without AUTH
(tests/integration/test_receiver.py), MxServer as a relay (test_mxserver.py), Redis without
the password (test_redis_module.py), idle and slow clients being no obstacle to others
(tests/hostile/test_smtp.py, test_httpreceiver.py).

Every client talks to 127.0.0.1; a second "client address" is a second source address within
127.0.0.0/8 (the whole block is loopback on Linux), so no other address of the machine is
ever contacted."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis as SyncRedis

from manycore_common import events
from tests.helpers import (
    LOOPBACK,
    RedisServer,
    Service,
    rsa_pem,
    running,
    wait_for,
    write_configs,
    write_dkim_keys,
)
from tests.hostile.conftest import IO_TIMEOUT, assert_alive, configured_service
from tests.integration.conftest import build_message, set_path
from tests.integration.postfix_env import Sink, postfix_processes, postfixlog_env
from tests.integration.test_postfixlog import listening_sockets
from tests.integration.webhook import Answer, Webhook
from tests.mxmail import tag

#: command-timeout-seconds of the SMTP services in this module: short, so tests stay fast.
TIMEOUT = 2.0
#: Scheduling slack on a busy two-core machine (other test runs share it).
SLACK = 1.5
#: The other client: a second loopback source address (see the module docstring).
OTHER_CLIENT = "127.0.0.2"
THIRD_CLIENT = "127.0.0.3"
P0, P1 = "IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1"
RP = "bounce.example.com"  # the example config's return-path domain
MAX_FAILURES = 4
MX_RCPT = tag("abc", "someone@example.net")  # a feedback address MxServer accepts


@pytest.fixture(scope="module")
def receiver(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    hostile_tls: tuple[Path, Path],
) -> Iterator[Service]:
    settings = {
        "receiver.command-timeout-seconds": TIMEOUT,
        "receiver.auth-throttle": {
            "max-failures": MAX_FAILURES,
            "lockout-seconds": 600,
            "delay-seconds": 0.05,
            "max-delay-seconds": 0.2,
        },
    }
    directory = tmp_path_factory.mktemp("abuse-rcv")
    with configured_service("receiver", directory, redis_server.port, settings, hostile_tls) as s:
        yield s


def post_basic(
    service: Service, user: str, password: str, uuid: str, source: str = LOOPBACK
) -> int:
    """POST a message with HTTP Basic credentials on a new connection from ``source``; the
    status code."""
    conn = http.client.HTTPConnection(
        LOOPBACK, int(service.port or 0), timeout=IO_TIMEOUT, source_address=(source, 0)
    )
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request(
            "POST",
            "/v1/mail/send",
            body=build_message(uuid),
            headers={"Authorization": f"Basic {token}", "Content-Type": "message/rfc822"},
        )
        response = conn.getresponse()
        response.read()
        return int(response.status)
    finally:
        conn.close()


#: This module's MxServer settings, over the hostile suite's (conftest.py, ``mx``).
MX_SETTINGS: dict[str, Any] = {
    "mxserver.command-timeout-seconds": TIMEOUT,
    # Every client of these tests is 127.0.0.1 (a hundred slow ones at once).
    "mxserver.limits": {"max-connections-per-ip": 1000},
}


# --- clients ----------------------------------------------------------------------------


def smtp_from(port: int, source: str = LOOPBACK) -> smtplib.SMTP:
    # local_hostname avoids smtplib's getfqdn() (a DNS lookup).
    return smtplib.SMTP(
        LOOPBACK, port, local_hostname="localhost", timeout=IO_TIMEOUT, source_address=(source, 0)
    )


def submission(
    service: Service, context: ssl.SSLContext, source: str = LOOPBACK, password: str | None = None
) -> smtplib.SMTP:
    """A session past STARTTLS; logged in when ``password`` is given (user apa)."""
    smtp = smtp_from(int(service.port or 0), source)
    smtp.ehlo()
    smtp.starttls(context=context)
    smtp.ehlo()
    if password is not None:
        smtp.login("apa", password)
    return smtp


def auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt, its reply whatever it is (smtplib's login() tries several)."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return smtp.docmd("AUTH", f"PLAIN {token}")


def assert_receiver_serves(service: Service, context: ssl.SSLContext, uuid: str) -> None:
    assert_alive(service)
    with submission(service, context, password="banan") as smtp:
        code, reply = _send(smtp, uuid)
        assert code == 250, reply


def _send(smtp: smtplib.SMTP, uuid: str) -> tuple[int, bytes]:
    smtp.mail("news@example.com")
    smtp.rcpt("alice@example.net")
    return smtp.data(build_message(uuid))


def assert_mx_serves(service: Service) -> None:
    assert_alive(service)
    with smtp_from(int(service.port or 0)) as smtp:
        smtp.ehlo()
        assert smtp.mail("")[0] == 250
        assert smtp.rcpt(MX_RCPT)[0] == 250
        code, reply = smtp.data(b"From: x@y.example\r\nSubject: ping\r\n\r\nhello\r\n")
        assert code == 250, reply


def dribble_until_closed(
    sock: socket.socket, payload: bytes, interval: float, limit: float
) -> tuple[float, bytes]:
    """Send ``payload`` one byte per ``interval`` (over and over) until the server closes the
    connection; (seconds it took, what the server said meanwhile)."""
    sock.settimeout(interval)
    started = time.monotonic()
    said = b""
    sent = 0
    while time.monotonic() - started < limit:
        with contextlib.suppress(TimeoutError):
            chunk = sock.recv(4096)
            if not chunk:
                break
            said += chunk
            continue
        try:
            sock.send(payload[sent % len(payload) :][:1])
        except OSError:
            break
        sent += 1
    return time.monotonic() - started, said


def assert_cut_in_time(elapsed: float, said: bytes) -> None:
    # Not before the timeout (it is the timeout that cut, not an error), and not much later.
    assert TIMEOUT - 0.5 <= elapsed <= TIMEOUT + SLACK, elapsed
    assert b"421 4.4.2" in said, said


# --- slow-loris -------------------------------------------------------------------------


def _receiver_command(service: Service, context: ssl.SSLContext) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((LOOPBACK, int(service.port or 0)), IO_TIMEOUT)
    assert sock.recv(1024).startswith(b"220")
    return sock, b"EHLO dribbling.example"  # never a line end


def _receiver_data(service: Service, context: ssl.SSLContext) -> tuple[socket.socket, bytes]:
    smtp = submission(service, context, password="banan")
    smtp.mail("news@example.com")
    smtp.rcpt("alice@example.net")
    assert smtp.docmd("DATA")[0] == 354
    assert smtp.sock is not None
    # Whole lines: each one arrives in time, the DATA phase as a whole never ends.
    return smtp.sock, b"X-Slow: y\r\n"


def _mx_command(service: Service, context: ssl.SSLContext) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((LOOPBACK, int(service.port or 0)), IO_TIMEOUT)
    assert sock.recv(1024).startswith(b"220")
    return sock, b"MAIL FROM:<dribble@example.net>"


def _mx_data(service: Service, context: ssl.SSLContext) -> tuple[socket.socket, bytes]:
    smtp = smtp_from(int(service.port or 0))
    smtp.ehlo()
    smtp.mail("")
    smtp.rcpt(MX_RCPT)
    assert smtp.docmd("DATA")[0] == 354
    assert smtp.sock is not None
    return smtp.sock, b"X-Slow: y\r\n"


def _receiver_tls_handshake(
    service: Service, context: ssl.SSLContext
) -> tuple[socket.socket, bytes]:
    smtp = smtp_from(int(service.port or 0))
    smtp.ehlo()
    assert smtp.docmd("STARTTLS")[0] == 220
    assert smtp.sock is not None
    # Bytes of a TLS record header, never a complete ClientHello.
    return smtp.sock, b"\x16\x03\x01\x02\x00"


SLOW_CLIENTS: dict[str, Callable[[Service, ssl.SSLContext], tuple[socket.socket, bytes]]] = {
    "receiver-command": _receiver_command,
    "receiver-data": _receiver_data,
    "receiver-tls-handshake": _receiver_tls_handshake,
    "mx-command": _mx_command,
    "mx-data": _mx_data,
}


@pytest.mark.parametrize("case", sorted(SLOW_CLIENTS))
def test_dribbling_client_is_cut_by_the_command_timeout(
    case: str,
    receiver: Service,
    mx: Service,
    hostile_client_tls: ssl.SSLContext,
    redis_client: SyncRedis,
) -> None:
    """A client sending a byte every 0.2 s never lets aiosmtpd's timer restart: it is told
    421 and closed ``command-timeout-seconds`` after its last complete command."""
    service = receiver if case.startswith("receiver") else mx
    metric = "smtp_timeouts_total"
    before = service.metric(metric)
    queued = redis_client.llen(P0) + redis_client.llen(P1)
    sock, payload = SLOW_CLIENTS[case](service, hostile_client_tls)
    with sock:
        elapsed, said = dribble_until_closed(sock, payload, 0.2, TIMEOUT + 3 * SLACK)
    if case == "receiver-tls-handshake":
        # The 421 is written into the TLS layer that never came up: only the cut is seen.
        assert TIMEOUT - 0.5 <= elapsed <= TIMEOUT + SLACK, elapsed
    else:
        assert_cut_in_time(elapsed, said)
    assert service.metric(metric) == before + 1
    # A DATA phase cut short stores nothing.
    assert redis_client.llen(P0) + redis_client.llen(P1) == queued


def _open_slow(port: int, count: int, start: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection((LOOPBACK, port), IO_TIMEOUT)
        sock.sendall(start)
        socks.append(sock)
    return socks


def _keep_dribbling(socks: list[socket.socket], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"x")


def _was_cut(sock: socket.socket) -> bool:
    """Whether the server closed this connection (after saying something or not)."""
    sock.settimeout(0.5)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed too
    return True


@pytest.mark.parametrize("name", ["receiver", "mx"])
def test_a_hundred_slow_loris_connections_are_cut_and_others_are_served(
    name: str, receiver: Service, mx: Service, hostile_client_tls: ssl.SSLContext
) -> None:
    service = receiver if name == "receiver" else mx
    stop = threading.Event()
    socks = _open_slow(int(service.port or 0), 100, b"MAIL FROM:<")
    opened = time.monotonic()
    dribbler = threading.Thread(target=_keep_dribbling, args=(socks, stop))
    dribbler.start()
    try:
        for attempt in range(2):
            started = time.monotonic()
            if name == "receiver":
                assert_receiver_serves(service, hostile_client_tls, f"loris{attempt}")
            else:
                assert_mx_serves(service)
            assert time.monotonic() - started < 3.0, "a normal client waited on slow ones"
        # Every slow connection is gone once the timeout has passed for the last one opened.
        time.sleep(max(0.0, opened + TIMEOUT + SLACK - time.monotonic()))
        stop.set()
        dribbler.join(IO_TIMEOUT)
        still_open = [s for s in socks if not _was_cut(s)]
        assert not still_open, f"{len(still_open)} slow connections outlived the timeout"
        if name == "receiver":
            assert_receiver_serves(service, hostile_client_tls, "lorisafter")
        else:
            assert_mx_serves(service)
    finally:
        stop.set()
        dribbler.join(IO_TIMEOUT)
        for sock in socks:
            sock.close()


def test_httpreceiver_cuts_dribbled_headers_and_bodies(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    def change(customer: dict[str, Any]) -> None:
        set_path(customer, "httpreceiver.request-timeout-seconds", TIMEOUT)

    global_file, customer_file = write_configs(tmp_path, redis_server.port, change)
    service = Service("httpreceiver", global_file, customer_file, tmp_path / "http.log")
    auth = "Basic " + base64.b64encode(b"apa:banan").decode()
    with running(service):
        port = int(service.port or 0)
        results: dict[str, tuple[float, bytes]] = {}
        timeouts_before = service.metric("nbr_dropped_emails_total", 'reason="timeout"')
        with SyncRedis(host=LOOPBACK, port=redis_server.port) as client:
            queued_before = client.llen("IB-MAIL-QUEUE-P1")

        def slow(kind: str) -> None:
            with socket.create_connection((LOOPBACK, port), IO_TIMEOUT) as sock:
                head = (
                    "POST /v1/mail/send HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: {auth}\r\nContent-Type: message/rfc822\r\n"
                    "Content-Length: 100000\r\n"
                )
                if kind == "body":
                    sock.sendall(head.encode() + b"\r\n")
                    payload = b"X"
                else:
                    payload = head.encode()  # a header section that never ends
                results[kind] = dribble_until_closed(sock, payload, 0.2, TIMEOUT + 3 * SLACK)

        threads = [threading.Thread(target=slow, args=(k,)) for k in ("headers", "body")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT + 5 * SLACK)
        for kind, (elapsed, _) in results.items():
            assert elapsed <= TIMEOUT + SLACK, f"{kind} dribbled for {elapsed:.1f}s"
        assert len(results) == 2
        # The body's cut is an answer the client can act on, and it is counted.
        assert b" 408 " in results["body"][1], results["body"][1]
        assert b'"reason": "request-timeout"' in results["body"][1]
        after = service.metric("nbr_dropped_emails_total", 'reason="timeout"')
        assert after == timeouts_before + 1
        with SyncRedis(host=LOOPBACK, port=redis_server.port) as client:
            assert client.llen("IB-MAIL-QUEUE-P1") == queued_before


# --- password guessing ------------------------------------------------------------------


def test_receiver_guessing_over_many_connections_is_throttled_per_client(
    receiver: Service, hostile_client_tls: ssl.SSLContext
) -> None:
    """Twelve guessers connect at once from one address, one wrong password each: exactly
    ``max-failures`` passwords are checked, the rest are refused unchecked with 454, and
    then even the right password is refused from there. Other addresses are not affected."""
    bad = ("receiver_auth_failures_total", 'reason="bad-credentials"')
    locked = ("receiver_auth_failures_total", 'reason="locked-out"')
    bad_before, locked_before = receiver.metric(*bad), receiver.metric(*locked)

    def guess(n: int) -> int:
        with submission(receiver, hostile_client_tls, OTHER_CLIENT) as smtp:
            return auth_plain(smtp, "apa", f"guess{n}")[0]

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(guess, range(12)))
    assert sorted(codes) == [454] * (12 - MAX_FAILURES) + [535] * MAX_FAILURES, codes
    with submission(receiver, hostile_client_tls, OTHER_CLIENT) as smtp:
        code, reply = auth_plain(smtp, "apa", "banan")
        assert code == 454 and reply.startswith(b"4.7.0"), (code, reply)
        # Locked out is not logged in: the session still cannot send.
        assert smtp.docmd("MAIL", "FROM:<news@example.com>")[0] == 530
    assert receiver.metric(*bad) == bad_before + MAX_FAILURES
    assert receiver.metric(*locked) == locked_before + 12 - MAX_FAILURES + 1
    # Another address guessing gets its own count (535, not 454) ...
    with submission(receiver, hostile_client_tls, THIRD_CLIENT) as smtp:
        assert auth_plain(smtp, "apa", "wrong")[0] == 535
    # ... and the usual client logs in and sends as before.
    assert_receiver_serves(receiver, hostile_client_tls, "notlockedout")


def test_httpreceiver_basic_auth_guessing_is_throttled_per_client_address(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    def change(customer: dict[str, Any]) -> None:
        set_path(
            customer,
            "httpreceiver.auth-throttle",
            {"max-failures": MAX_FAILURES, "lockout-seconds": 600, "delay-seconds": 0.02},
        )

    global_file, customer_file = write_configs(tmp_path, redis_server.port, change)
    service = Service("httpreceiver", global_file, customer_file, tmp_path / "http.log")

    def post(password: str, source: str) -> int:
        return post_basic(service, "apa", password, "httpguess", source)

    with running(service):
        codes = [post(f"guess{n}", OTHER_CLIENT) for n in range(MAX_FAILURES + 2)]
        assert codes == [401] * MAX_FAILURES + [429, 429], codes
        assert post("banan", OTHER_CLIENT) == 429
        assert post("wrong", THIRD_CLIENT) == 401
        assert post("banan", LOOPBACK) == 200
        assert service.metric("httpreceiver_auth_failures_total", 'reason="locked-out"') == 3


# --- never a relay without AUTH ---------------------------------------------------------


def unready(service: Service) -> bool:
    return service.readyz()[0] == 503


def _bytes(values: Iterable[object]) -> list[bytes]:
    """Replies of a client without decode_responses (redis-py types them bytes | str)."""
    found = list(values)
    assert all(isinstance(v, bytes) for v in found), found
    return [v for v in found if isinstance(v, bytes)]


def _all_values(client: SyncRedis) -> bytes:
    """Every value in Redis, concatenated: for 'is this anywhere?' questions."""
    out: list[object] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind in (b"set", b"zset"):
            out += list(client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1))
        out.append(key)
    return b"\n".join(_bytes(out))


def test_receiver_refuses_every_relay_attempt_without_auth(
    receiver: Service, hostile_client_tls: ssl.SSLContext, redis_client: SyncRedis
) -> None:
    """After STARTTLS but without (successful) AUTH, MAIL, RCPT and DATA are refused with
    530 5.7.0; a client that pushes its message anyway gets it read as junk commands;
    nothing reaches Redis and every refusal is counted."""
    missing = ("receiver_auth_failures_total", 'reason="missing"')
    before = receiver.metric(*missing)
    lengths = (redis_client.llen(P0), redis_client.llen(P1))
    marker = "relayattempt"
    message = build_message(marker)
    with submission(receiver, hostile_client_tls, THIRD_CLIENT) as smtp:
        assert auth_plain(smtp, "apa", "not-the-password")[0] == 535
        replies = [
            smtp.docmd("MAIL", "FROM:<news@example.com>"),
            smtp.docmd("RCPT", "TO:<victim@example.org>"),
            smtp.docmd("DATA"),
        ]
        for code, reply in replies:
            assert code == 530 and reply.startswith(b"5.7.0"), (code, reply)
        # As if the client ignored the refusals (pipelined its message): every line is a
        # refused command, until aiosmtpd hangs up on too many unknown ones.
        smtp.send(message + b".\r\n")
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            for _ in range(message.count(b"\r\n") + 1):
                code, _ = smtp.getreply()
                assert code >= 500, code
    assert receiver.metric(*missing) == before + 3
    assert (redis_client.llen(P0), redis_client.llen(P1)) == lengths
    assert marker.encode() not in _all_values(redis_client)


# --- the private Postfix ----------------------------------------------------------------


def test_postfix_listens_on_loopback_only_over_ipv4_and_ipv6(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """With both protocols on (an operator may set inet_protocols), every socket the private
    Postfix listens on is 127.0.0.1 or ::1, and no master.cf service names another host.
    Only the bound addresses are inspected: no other address of the machine is contacted."""
    sink = Sink().start()
    try:
        with postfixlog_env(
            tmp_path, redis_server.port, sink, main_cf={"inet_protocols": "all"}
        ) as env:
            env.start()
            pids = postfix_processes(env.base)
            assert pids, "no postfix process found"
            sockets = listening_sockets(pids)
            port = env.smtpd_port
            # master.cf names 127.0.0.1 for smtpd itself, so IPv6 adds no socket at all.
            assert sockets == [f"127.0.0.1:{port}"], sockets
            main_cf = (env.base / "etc" / "main.cf").read_text()
            settings: dict[str, str] = {}
            for line in main_cf.splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    name, _, value = line.partition("=")
                    settings[name.strip()] = value.strip()
            assert settings["inet_interfaces"] == "loopback-only"
            assert settings["mynetworks"] == "127.0.0.0/8"
            master_cf = (env.base / "etc" / "master.cf").read_text()
            for line in master_cf.splitlines():
                fields = line.split()
                if len(fields) > 1 and fields[1] == "inet" and not line[0].isspace():
                    host, _, _ = fields[0].rpartition(":")
                    assert host in ("127.0.0.1", "[::1]"), line
    finally:
        sink.stop()


# --- secrets ----------------------------------------------------------------------------

SMTP_PW = "smtp-pw-S3CR3T-a1b2c3d4"
HTTP_PW = "http-pw-S3CR3T-e5f6g7h8"
REDIS_PW = "redis-pw-S3CR3T-i9j0k1l2"
SIGNING = "signing-S3CR3T-m3n4o5p6"
HEADER_TOKEN = "hdr-tok-S3CR3T-q7r8s9t0"
UNSUB = "unsub-S3CR3T-u1v2w3x4y5z6-0123456789"
FEEDBACK = "feedback-S3CR3T-a1b2c3d4e5f6-0123456789"
S3_KEY = "s3-key-S3CR3T-a9b8c7d6"
BOUNCE_SECRET = "bounce-S3CR3T-e5f4g3h2"
DKIM_PEM = rsa_pem(label="abuse-secret").decode()
#: A line from the middle of the key: key material, not the PEM armour.
DKIM_LINE = DKIM_PEM.splitlines()[10]
SECRETS = [
    SMTP_PW, HTTP_PW, REDIS_PW, SIGNING, HEADER_TOKEN, UNSUB, FEEDBACK, S3_KEY, BOUNCE_SECRET
]  # fmt: skip


def assert_no_secret(where: str, text: str | bytes) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for secret in [*SECRETS, DKIM_LINE]:
        assert secret not in text, f"a secret ({secret[:12]}…) appears in {where}"


def _secret_config(customer: dict[str, Any], webhook_url: str) -> None:
    for section in customer.values():
        if isinstance(section, dict) and "reliable-queue" in section:
            section["reliable-queue"]["redis"]["password"] = REDIS_PW
    set_path(customer, "receiver.command-timeout-seconds", TIMEOUT)
    set_path(customer, "receiver.auth-logins", [{"username": "apa", "password": SMTP_PW}])
    set_path(customer, "httpreceiver.auth-logins", [{"username": "apa", "password": HTTP_PW}])
    domain = customer["transformer"]["domain-settings"][0]
    domain.pop("dkim-private-key-file", None)
    domain["dkim-private-key"] = DKIM_PEM
    customer["common-config"] = {
        "unsubscribe-secret": UNSUB,
        "feedback-secret": FEEDBACK,
        "object-storage": {"bucket": "b", "access-key-id": "AK", "secret-access-key": S3_KEY},
    }
    backdata = {
        "post-url": webhook_url,
        "batch-size": 10,
        "timeout-seconds": 1,
        "retry-initial-seconds": 0.05,
        "retry-max-seconds": 0.1,
        "signing-secret": SIGNING,
        "headers": {"Authorization": f"Bearer {HEADER_TOKEN}"},
        "bounce-manager": {"secret": BOUNCE_SECRET, "cid": 1, "url": "http://127.0.0.1:9/"},
    }
    for key, value in backdata.items():
        set_path(customer, f"backdata.{key}", value)


def _run_with_config(
    directory: Path, customer: dict[str, Any], service: str
) -> subprocess.CompletedProcess[str]:
    global_file = directory / "inboxbooster-mailer-global.yaml"
    customer_file = directory / "bad-customer.yaml"
    customer_file.write_text(yaml.safe_dump(customer, sort_keys=False))
    script = Path(sys.executable).with_name(f"manycore-{service}")
    return subprocess.run(
        [
            str(script),
            "--global-config-file",
            str(global_file),
            "--customer-config-file",
            str(customer_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


#: Secrets in the wrong place or of the wrong type, and the key each error line must name.
BAD_CONFIGS: list[tuple[str, Any, str]] = [
    ("receiver.max-message-size", SMTP_PW, "receiver.max-message-size"),
    ("receiver.auth-logins", [{"username": "apa", "password": [SMTP_PW]}], "password"),
    ("backdata.timeout-seconds", SIGNING, "backdata.timeout-seconds"),
    # A colon forgotten between the header's name and its value.
    ("backdata.headers", {f"Authorization Bearer {HEADER_TOKEN}": None}, "backdata.headers"),
    ("common-config.unsubscribe-secret", "short-S3CR3T", "unsubscribe-secret"),
    ("transformer.workers", DKIM_PEM, "transformer.workers"),
    ("redis.server", {"password": REDIS_PW[:10], "port": UNSUB}, "redis.server"),
]


def test_no_secret_in_logs_metrics_redis_or_config_errors(
    tmp_path: Path, hostile_tls: tuple[Path, Path], hostile_client_tls: ssl.SSLContext
) -> None:
    redis = RedisServer(tmp_path / "redis", None, "--requirepass", REDIS_PW).start()
    hook = Webhook().start()
    # The webhook first fails (retried), then refuses (dead-lettered); both answers echo
    # the credentials BackData sent, as a careless or debugging endpoint might.
    echo = f"bad credentials: Authorization: Bearer {HEADER_TOKEN}".encode()
    hook.script = [Answer(500, echo)]
    hook.default = Answer(401, echo)
    directory = tmp_path / "configs"
    global_file, customer_file = write_configs(
        directory, redis.port, lambda c: _secret_config(c, hook.url)
    )
    write_dkim_keys(directory)
    shutil.copy(hostile_tls[0], directory / "receiver_cert.pem")
    shutil.copy(hostile_tls[1], directory / "receiver_key.pem")
    services = [
        Service(name, global_file, customer_file, tmp_path / f"{name}.log")
        for name in ("receiver", "httpreceiver", "mxserver", "backdata")
    ]
    rcv, api, mx, _ = services
    client = SyncRedis(host=LOOPBACK, port=redis.port, password=REDIS_PW)
    try:
        with contextlib.ExitStack() as stack:
            for service in services:
                stack.enter_context(running(service))
            _drive_failures(rcv, api, mx, hostile_client_tls)
            for n in range(3):
                event = events.new_event("delivered", uuid=f"sec{n}", seq=n, rcpt="a@b.example")
                client.lpush("EVENT_QUEUE", events.encode_event(event, source="test"))
            wait_for(
                lambda: client.llen("{EVENT_QUEUE}:dead") == 3, timeout=15, what="dead letters"
            )
            assert [r.status for r in hook.requests][:1] == [500]
            assert_no_secret("Redis", _all_values(client))
            # Redis down: every service fails its checks and its requests, and logs why.
            redis.stop()
            with submission(rcv, hostile_client_tls, password=SMTP_PW) as smtp:
                assert _send(smtp, "redisdown")[0] == 451
            for service in services:
                wait_for(partial(unready, service), what=f"{service.name} unready")
                assert_no_secret(f"{service.name} /metrics", service.metrics())
                assert_no_secret(f"{service.name} /readyz", json.dumps(service.readyz()[1]))
        for service in services:
            assert_no_secret(f"{service.name} log", service.log.read_bytes())
    finally:
        client.close()
        hook.close()
        redis.stop()

    for path, value, key in BAD_CONFIGS:
        bad = yaml.safe_load(customer_file.read_text())
        set_path(bad, path, value)
        # Each service validates only its own section (and the common keys it uses).
        section = path.split(".")[0]
        run = _run_with_config(
            directory, bad, "httpreceiver" if section == "common-config" else section
        )
        assert run.returncode == 2, (path, run.stdout, run.stderr)
        lines = run.stderr.splitlines()
        assert lines and all(line.startswith("config error: ") for line in lines), run.stderr
        assert any(key in line for line in lines), (key, run.stderr)
        assert_no_secret(f"the config error for {path}", run.stdout + run.stderr)


def _drive_failures(rcv: Service, api: Service, mx: Service, context: ssl.SSLContext) -> None:
    """Wrong passwords that contain the right one, a password typed as the user name,
    successes, refused messages and a bad unsubscribe token."""
    with submission(rcv, context) as smtp:
        assert auth_plain(smtp, "apa", SMTP_PW + "x")[0] == 535
        assert auth_plain(smtp, SMTP_PW, SMTP_PW)[0] == 535
    with submission(rcv, context, password=SMTP_PW) as smtp:
        assert _send(smtp, "secretok")[0] == 250
        smtp.mail("news@example.com")
        smtp.rcpt("alice@example.net")
        assert smtp.data(build_message("BAD-UUID"))[0] == 550
    for user, password, expected in (
        ("apa", HTTP_PW + "x", 401),
        (HTTP_PW, "x", 401),
        ("apa", HTTP_PW, 200),
    ):
        assert post_basic(api, user, password, "httpsecret") == expected
    conn = http.client.HTTPConnection(LOOPBACK, int(api.port or 0), timeout=IO_TIMEOUT)
    conn.request("POST", "/v1/unsubscribe/forged-token")
    assert conn.getresponse().status >= 400
    conn.close()
    with smtp_from(int(mx.port or 0)) as smtp:
        smtp.ehlo()
        smtp.mail("")
        assert smtp.rcpt("relay@elsewhere.example")[0] == 550
