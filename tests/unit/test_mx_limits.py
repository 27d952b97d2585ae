"""MxServer's bookkeeping: what a client is, connections counted per client and in all, and
message slots."""

from __future__ import annotations

from manycore_mxserver.limits import ConnectionLimiter, RateLimiter, Slots, client_key


def test_an_ipv6_client_is_its_64() -> None:
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") != client_key("192.0.2.2")


def test_connections_are_counted_while_open() -> None:
    limiter = ConnectionLimiter(2)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    assert limiter.acquire("a") == "client"
    assert limiter.acquire("b") is None
    limiter.release("a")
    assert limiter.acquire("a") is None
    for _ in range(3):
        limiter.release("a")
    assert limiter._open == {"b": 1}  # nothing kept for a client without connections
    assert limiter.open == 1


def test_connections_in_all_are_capped() -> None:
    limiter = ConnectionLimiter(2, total=3)
    assert [limiter.acquire(c) for c in "abcd"] == [None, None, None, "total"]
    limiter.release("d")  # never acquired: frees nothing
    assert limiter.acquire("e") == "total"
    limiter.release("a")
    assert limiter.acquire("e") is None and limiter.open == 3


def test_message_slots() -> None:
    slots = Slots(2)
    assert slots.take() and slots.take() and not slots.take()
    slots.release()
    assert slots.take()
    for _ in range(5):
        slots.release()
    assert slots.taken == 0


def test_rate_limit_window() -> None:
    limiter = RateLimiter(2, 10.0)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 1.0) and not limiter.allow("a", 2.0)
    assert limiter.allow("a", 10.5)


def test_a_message_given_back_does_not_count() -> None:
    limiter = RateLimiter(1, 10.0)
    assert limiter.allow("a", 0.0) and not limiter.allow("a", 1.0)
    limiter.give_back("a")
    limiter.give_back("nobody")  # harmless
    assert limiter.allow("a", 2.0) and not limiter.allow("a", 3.0)
