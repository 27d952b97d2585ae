"""HttpReceiver's login throttle against an outsider who shares the clients' address (an
SNAT ingress with ``trusted-proxies`` empty: every request comes from 127.0.0.1 here), over
real HTTP. The rules and their threat model: ``manycore_httpreceiver.login``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import RedisServer, Service, running
from tests.integration.test_httpreceiver import basic, http_service, post_as

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
