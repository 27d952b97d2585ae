"""The Receiver's SMTP AUTH throttle over real SMTP (smtplib, STARTTLS, AUTH PLAIN): lockout
per (address, login), a cap on unknown names per address that never locks a right password,
parallel guessing capped. Other client addresses come from binding the client's source to
127.0.0.2 (loopback; nothing leaves the machine). The rules and their threat model:
``manycore_common.loginthrottle``, the same as HttpReceiver's
(tests/integration/test_httpreceiver_login.py)."""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import LOOPBACK, RedisServer, Service, running
from tests.integration.test_receiver import receiver_service

MAX_FAILURES, MAX_UNKNOWN = 3, 8
#: Another client address: Linux routes all of 127.0.0.0/8 to the loopback interface.
OTHER_ADDRESS = "127.0.0.2"


@pytest.fixture
def shared(
    tmp_path: Path,
    redis_server: RedisServer,
    tls_files: tuple[Path, Path],
) -> Iterator[Service]:
    service = receiver_service(
        tmp_path,
        redis_server.port,
        tls_files,
        **{
            "receiver__auth-throttle": {
                "max-failures": MAX_FAILURES,
                "max-unknown-login-failures": MAX_UNKNOWN,
                "lockout-seconds": 600,
                "delay-seconds": 0.01,
            },
            "receiver__auth-logins": [
                {"username": "apa", "password": "banan"},
                {"username": "citron", "password": "dadel"},
            ],
        },
    )
    with running(service):
        yield service


def attempt(
    service: Service, context: ssl.SSLContext, user: str, password: str, source: str = LOOPBACK
) -> int:
    """The reply code of one AUTH PLAIN on a fresh connection from ``source``."""
    assert service.port is not None
    with smtplib.SMTP(
        LOOPBACK,
        service.port,
        local_hostname="localhost",
        timeout=15,
        source_address=(source, 0),
    ) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        smtp.ehlo()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = smtp.docmd("AUTH", f"PLAIN {token}")
        return code


def metric(service: Service, reason: str) -> float:
    return service.metric("receiver_auth_failures_total", f'reason="{reason}"')


def test_guessing_one_login_never_locks_another_nor_another_address(
    shared: Service, client_tls: ssl.SSLContext
) -> None:
    def auth(user: str, password: str, source: str = LOOPBACK) -> int:
        return attempt(shared, client_tls, user, password, source)

    # Before the lock, the right password for apa from the same address gets in...
    for n in range(MAX_FAILURES - 1):
        assert auth("apa", f"guess{n}") == 535
    assert auth("apa", "banan") == 235
    assert auth("apa", "guess-last") == 535
    # ...after it, the pair (this address, apa) is refused, and only it.
    assert auth("apa", "banan") == 454
    assert auth("apa", "another-guess") == 454
    assert auth("citron", "dadel") == 235
    assert auth("citron", "wrong") == 535  # its own pair's first failure
    assert auth("citron", "dadel") == 235
    assert auth("apa", "banan", OTHER_ADDRESS) == 235
    assert metric(shared, "bad-credentials") == MAX_FAILURES + 1
    assert metric(shared, "locked-out") == 2


def test_spraying_names_never_locks_a_right_password(
    shared: Service, client_tls: ssl.SSLContext
) -> None:
    def auth(user: str, password: str, source: str = LOOPBACK) -> int:
        return attempt(shared, client_tls, user, password, source)

    assert [auth(f"user{n}", "password") for n in range(MAX_UNKNOWN)] == [535] * MAX_UNKNOWN
    # The address is now refused for unknown names, and a wrong password for a real name
    # gets the same 454: the answers do not tell which names exist.
    assert auth("user-next", "password") == 454
    assert auth("apa", "guess") == 454
    assert auth("citron", "guess") == 454
    # A right password is checked and let in whatever the address did.
    assert auth("apa", "banan") == 235
    assert auth("citron", "dadel") == 235
    # Another address is not locked for unknown names.
    assert auth("user-next", "password", OTHER_ADDRESS) == 535
    # Guesses at real names still count per pair while hidden: bounded all the same.
    for n in range(MAX_FAILURES - 1):
        assert auth("apa", f"guess-{n}") == 454
    assert auth("apa", "banan") == 454
    assert auth("citron", "dadel") == 235  # its pair has one failure: still open


def test_parallel_guessing_at_one_pair_is_bounded_and_other_logins_pass(
    shared: Service, client_tls: ssl.SSLContext
) -> None:
    with ThreadPoolExecutor(20) as pool:
        guesses = list(pool.map(lambda n: attempt(shared, client_tls, "apa", f"g{n}"), range(20)))
        rights = list(pool.map(lambda _: attempt(shared, client_tls, "citron", "dadel"), range(8)))
    assert guesses.count(535) == MAX_FAILURES and guesses.count(454) == 20 - MAX_FAILURES
    assert rights == [235] * 8
    assert metric(shared, "bad-credentials") == MAX_FAILURES


def test_auth_login_counts_the_same_way(shared: Service, client_tls: ssl.SSLContext) -> None:
    """AUTH LOGIN (the interactive mechanism) reaches the same throttle."""
    assert shared.port is not None
    with smtplib.SMTP(LOOPBACK, shared.port, local_hostname="localhost", timeout=15) as smtp:
        smtp.ehlo()
        smtp.starttls(context=client_tls)
        smtp.ehlo()
        smtp.user, smtp.password = "apa", "wrong"
        for _ in range(MAX_FAILURES):
            with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
                smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
            assert failure.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert failure.value.smtp_code == 454
    assert attempt(shared, client_tls, "citron", "dadel") == 235
