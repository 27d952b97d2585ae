"""MxServer's per-client bookkeeping: what a client is, and connections counted per client."""

from __future__ import annotations

from manycore_mxserver.limits import ConnectionLimiter, RateLimiter, client_key


def test_an_ipv6_client_is_its_64() -> None:
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") != client_key("192.0.2.2")


def test_connections_are_counted_while_open() -> None:
    limiter = ConnectionLimiter(2)
    assert limiter.acquire("a") and limiter.acquire("a") and not limiter.acquire("a")
    assert limiter.acquire("b")
    limiter.release("a")
    assert limiter.acquire("a")
    for _ in range(3):
        limiter.release("a")
    assert limiter._open == {"b": 1}  # nothing kept for a client without connections


def test_rate_limit_window() -> None:
    limiter = RateLimiter(2, 10.0)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 1.0) and not limiter.allow("a", 2.0)
    assert limiter.allow("a", 10.5)
