"""HttpReceiver's login throttle over real HTTP: lockout per (address, login), parallel
guessing capped, clients behind trusted proxies, and an outsider who shares the clients'
address (an SNAT ingress with ``trusted-proxies`` empty: every request comes from 127.0.0.1
here). The rules and their threat model: ``manycore_common.loginthrottle``."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import LOOPBACK, RedisServer, Service, running
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import GOOD_AUTH, RFC822, http_service, post


def test_failed_logins_are_locked_out(tmp_path: Path, redis_server: RedisServer) -> None:
    service = http_service(
        tmp_path,
        redis_server.port,
        **{"httpreceiver__auth-throttle": {"max-failures": 2, "delay-seconds": 0.01}},
    )
    bad = "Basic " + base64.b64encode(b"apa:wrong").decode()
    with running(service):
        assert post(service, build_message("a"), auth=bad)[0] == 401
        assert post(service, build_message("a"), auth=bad)[0] == 401
        status, headers, body = post(service, build_message("a"))
        assert status == 429 and int(headers["Retry-After"]) > 0
        assert body["reason"] == "too-many-auth-failures"


def post_as(service: Service, auth: str, forwarded_for: str | None = None) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, service.port, timeout=30)
    headers = {"Authorization": auth, "Content-Type": RFC822}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    conn.request("POST", "/v1/mail/send", body=build_message("conc"), headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def test_parallel_guessing_is_capped_at_max_failures(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Many concurrent wrong logins: only max-failures of them are ever checked; the rest are
    refused as locked out, even those that were waiting in the tarpit when the lock came."""
    from concurrent.futures import ThreadPoolExecutor

    service = http_service(
        tmp_path,
        redis_server.port,
        **{"httpreceiver__auth-throttle": {"max-failures": 3, "delay-seconds": 0.2}},
    )
    bad = "Basic " + base64.b64encode(b"apa:guess").decode()
    with running(service), ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda _: post_as(service, bad), range(40)))
        checked = service.metric("httpreceiver_auth_failures_total", 'reason="bad-credentials"')
    assert checked == 3
    assert statuses.count(401) == 3 and statuses.count(429) == 37


def test_throttle_uses_the_client_behind_a_trusted_proxy(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = http_service(
        tmp_path,
        redis_server.port,
        **{
            "httpreceiver__auth-throttle": {"max-failures": 2, "delay-seconds": 0},
            "httpreceiver__trusted-proxies": ["127.0.0.0/8"],
        },
    )
    bad = "Basic " + base64.b64encode(b"apa:guess").decode()
    with running(service):
        # A guesser behind the ingress locks out only its own (address, login) pair
        # (addresses from TEST-NET-1; they are header values, nothing is sent to them).
        assert post_as(service, bad, "192.0.2.10") == 401
        assert post_as(service, bad, "192.0.2.10") == 401
        assert post_as(service, GOOD_AUTH, "192.0.2.10") == 429
        assert post_as(service, GOOD_AUTH, "192.0.2.11") == 200
        # A forged hop in front of the real one does not help: the nearest untrusted wins.
        assert post_as(service, GOOD_AUTH, "192.0.2.99, 192.0.2.10") == 429


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_behind_a_proxy_failures_never_lock_the_login_nor_the_proxy(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = http_service(
        tmp_path,
        redis_server.port,
        **{
            "httpreceiver__auth-throttle": {
                "max-failures": 3,
                "max-unknown-login-failures": 3,
                "delay-seconds": 0,
            },
            "httpreceiver__trusted-proxies": ["127.0.0.0/8"],
            "httpreceiver__auth-logins": [
                {"username": "apa", "password": "banan"},
                {"username": "other", "password": "other-password"},
            ],
        },
    )
    other = basic("other", "other-password")
    with running(service):
        # A guesser spread over many clients (one try each) locks nothing: knowing a login
        # name is not enough to lock its customer out.
        for n in range(1, 7):
            assert post_as(service, basic("apa", "guess"), f"192.0.2.{n}") == 401
        assert post_as(service, GOOD_AUTH, "192.0.2.50") == 200
        assert post_as(service, GOOD_AUTH, "192.0.2.1") == 200
        # Failures whose client is the proxy itself (no X-Forwarded-For, or only trusted
        # hops): never counted against the proxy's address.
        for forwarded in [None] * 5 + ["127.0.0.5"] * 5:
            assert post_as(service, basic("nobody", "guess"), forwarded) == 401
        assert post_as(service, other) == 200
        assert post_as(service, other, "127.0.0.5") == 200
        assert service.metric("httpreceiver_proxy_lockouts_refused_total") == 10
        # A real client's address is locked for unknown names by its own failures, and a
        # wrong password from it is answered alike; a right one still gets in.
        for _ in range(3):
            assert post_as(service, basic("nobody", "guess"), "192.0.2.60") == 401
        assert post_as(service, basic("nobody", "guess"), "192.0.2.60") == 429
        assert post_as(service, basic("other", "guess"), "192.0.2.60") == 429
        assert post_as(service, other, "192.0.2.60") == 200
        assert post_as(service, basic("nobody", "guess"), "192.0.2.61") == 401
        # Guesses at a configured login through the proxy's own address still count, per
        # (address, login): bounded, and locking only that login through the proxy.
        for _ in range(3):
            assert post_as(service, basic("other", "guess")) == 401
        assert post_as(service, other) == 429
        assert post_as(service, GOOD_AUTH) == 200
        assert post_as(service, other, "192.0.2.62") == 200
        assert service.metric("httpreceiver_proxy_lockouts_refused_total") == 10
    log = service.log.read_text()
    assert log.count("failed login not counted against trusted proxy") == 1  # rate-limited
    assert "too wide" in log


def test_without_trusted_proxies_names_are_not_counted(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = http_service(
        tmp_path,
        redis_server.port,
        **{"httpreceiver__auth-throttle": {"max-failures": 2, "delay-seconds": 0}},
    )
    with running(service):
        # X-Forwarded-For from an untrusted peer is ignored: all of it is one client.
        assert post_as(service, basic("apa", "guess"), "192.0.2.1") == 401
        assert post_as(service, basic("apa", "guess"), "192.0.2.2") == 401
        assert post_as(service, GOOD_AUTH, "192.0.2.3") == 429


MAX_FAILURES, MAX_UNKNOWN = 3, 12
APA, CITRON = basic("apa", "banan"), basic("citron", "dadel")


@pytest.fixture
def shared(tmp_path: Path, redis_server: RedisServer) -> Iterator[Service]:
    service = http_service(
        tmp_path,
        redis_server.port,
        **{
            "httpreceiver__auth-throttle": {
                "max-failures": MAX_FAILURES,
                "max-unknown-login-failures": MAX_UNKNOWN,
                "lockout-seconds": 600,
                "delay-seconds": 0.01,
            },
            "httpreceiver__auth-logins": [
                {"username": "apa", "password": "banan"},
                {"username": "citron", "password": "dadel"},
            ],
        },
    )
    with running(service):
        yield service


def metric(service: Service, reason: str) -> float:
    return service.metric("httpreceiver_auth_failures_total", f'reason="{reason}"')


def test_guessing_one_login_never_locks_another_from_the_same_address(shared: Service) -> None:
    # Before the lock, the right password for apa from the same address gets in...
    for n in range(MAX_FAILURES - 1):
        assert post_as(shared, basic("apa", f"guess{n}")) == 401
    assert post_as(shared, APA) == 200
    assert post_as(shared, basic("apa", "guess-last")) == 401
    # ...after it, the pair (this address, apa) is refused, and only it: the guesser and a
    # client of apa on one address are the same pair (the documented residual).
    assert post_as(shared, APA) == 429
    assert post_as(shared, basic("apa", "another-guess")) == 429
    assert post_as(shared, CITRON) == 200
    assert post_as(shared, basic("citron", "wrong")) == 401  # its own pair's first failure
    assert post_as(shared, CITRON) == 200
    assert metric(shared, "bad-credentials") == MAX_FAILURES + 1
    assert metric(shared, "locked-out") == 2


def test_spraying_names_never_locks_a_right_password(shared: Service) -> None:
    names = [basic(f"user{n}", "password") for n in range(MAX_UNKNOWN)]
    assert [post_as(shared, auth) for auth in names] == [401] * MAX_UNKNOWN
    # The address is now refused for unknown names, and a wrong password for a real name
    # gets the same 429: the answers do not tell which names exist.
    assert post_as(shared, basic("user-next", "password")) == 429
    assert post_as(shared, basic("apa", "guess")) == 429
    assert post_as(shared, basic("citron", "guess")) == 429
    # A right password is checked and let in whatever the address did.
    assert post_as(shared, APA) == 200
    assert post_as(shared, CITRON) == 200
    # Guesses at real names still count per pair while hidden: bounded all the same.
    for n in range(MAX_FAILURES - 1):
        assert post_as(shared, basic("apa", f"guess-{n}")) == 429
    assert post_as(shared, APA) == 429
    assert post_as(shared, CITRON) == 200  # its pair has one failure: still open


def test_parallel_guessing_at_one_pair_is_bounded_and_other_logins_pass(
    shared: Service,
) -> None:
    with ThreadPoolExecutor(30) as pool:
        guesses = list(pool.map(lambda n: post_as(shared, basic("apa", f"g{n}")), range(30)))
        rights = list(pool.map(lambda _: post_as(shared, CITRON), range(10)))
    assert guesses.count(401) == MAX_FAILURES and guesses.count(429) == 30 - MAX_FAILURES
    assert rights == [200] * 10
    assert metric(shared, "bad-credentials") == MAX_FAILURES
