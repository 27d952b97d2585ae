from __future__ import annotations

from pydantic import SecretStr

from manycore_common.auth import Credentials, FailureThrottle
from manycore_common.config import AuthThrottle, Login


def login(user: str, password: str) -> Login:
    return Login.model_construct(username=user, password=SecretStr(password))


def throttle(**settings: float) -> FailureThrottle:
    values = {
        "max-failures": 3,
        "window-seconds": 60,
        "lockout-seconds": 120,
        "delay-seconds": 0.5,
        "max-delay-seconds": 2,
    }
    values.update({k.replace("_", "-"): v for k, v in settings.items()})
    return FailureThrottle(AuthThrottle.model_validate(values))


def test_credentials() -> None:
    creds = Credentials([login("apa", "banan"), login("citron", "dadel")])
    assert creds.check(b"apa", b"banan")
    assert creds.check(b"citron", b"dadel")
    assert not creds.check(b"apa", b"dadel")
    assert not creds.check(b"", b"")
    assert not creds.check(b"apa", b"banan\x00")


def test_delay_doubles_then_caps_and_lockout_expires() -> None:
    t = throttle()
    assert t.delay_for("1.2.3.4", now=0) == 0
    t.failure("1.2.3.4", now=0)
    assert t.delay_for("1.2.3.4", now=1) == 0.5
    t.failure("1.2.3.4", now=1)
    assert t.delay_for("1.2.3.4", now=2) == 1.0
    assert t.locked_for("1.2.3.4", now=2) == 0
    t.failure("1.2.3.4", now=2)
    assert t.delay_for("1.2.3.4", now=3) == 2  # capped
    assert t.locked_for("1.2.3.4", now=3) == 119
    assert t.locked_for("5.6.7.8", now=3) == 0  # other clients unaffected
    assert t.locked_for("1.2.3.4", now=200) == 0  # lockout and window over: forgotten


def test_failures_age_out() -> None:
    t = throttle()
    t.failure("c", now=0)
    assert t.delay_for("c", now=1) == 0.5
    assert t.delay_for("c", now=61) == 0


def test_memory_is_bounded() -> None:
    t = FailureThrottle(AuthThrottle(), max_clients=100)
    for i in range(1000):
        t.failure(f"10.0.{i // 256}.{i % 256}", now=0)
    assert len(t._records) == 100


def test_failures_count_per_pair_and_per_address_for_unknown_names() -> None:
    from manycore_common.loginthrottle import LoginThrottle, address_key, attempt_key

    # A configured name: the (address, login) pair, even at a proxy's own address.
    assert attempt_key("192.0.2.1", "apa", True, False) == "pair:192.0.2.1\0apa"
    assert attempt_key("10.1.2.3", "apa", True, True) == "pair:10.1.2.3\0apa"
    # Any other name, or none readable: the address, never a proxy's.
    assert attempt_key("192.0.2.1", "zz", False, False) == address_key("192.0.2.1")
    assert attempt_key("192.0.2.1", None, False, False) == address_key("192.0.2.1")
    assert attempt_key("10.1.2.3", "zz", False, True) is None
    settings = AuthThrottle.model_validate(
        {"max-failures": 2, "max-unknown-login-failures": 4, "delay-seconds": 0}
    )
    t = LoginThrottle(settings)
    a, b = attempt_key("x", "apa", True, False), attempt_key("x", "citron", True, False)
    unknown = attempt_key("x", "zz", False, False)
    assert t.failure(a, "x", False) == 0 and t.locked_for(a) == 0
    assert t.failure(a, "x", False) == 0 and t.locked_for(a) > 0
    assert t.locked_for(b) == 0  # another login from the same address
    for _ in range(3):
        t.failure(unknown, "x", False)
    assert t.locked_for(unknown) == 0
    t.failure(unknown, "x", False)
    assert t.locked_for(unknown) > 0 and t.locked_for(b) == 0
    # Now a wrong password for a configured name is answered as locked (no name oracle).
    assert t.failure(b, "x", False) > 0


def test_credentials_know_their_names() -> None:
    credentials = Credentials([login("apa", "banan")])
    assert credentials.knows(b"apa") and not credentials.knows(b"ap")
