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


def test_throttle_keys_behind_proxies() -> None:
    from ipaddress import ip_network

    from manycore_common.auth import username_key
    from manycore_httpreceiver.app import throttle_keys

    proxies = (ip_network("10.0.0.0/8"),)
    # No proxies: the address only, whatever the name.
    assert throttle_keys("192.0.2.1", (), "apa", True) == ["192.0.2.1"]
    # Behind proxies: the client and a configured login name; an unknown name is not kept.
    assert throttle_keys("192.0.2.1", proxies, "apa", True) == ["192.0.2.1", username_key("apa")]
    assert throttle_keys("192.0.2.1", proxies, "zz", False) == ["192.0.2.1"]
    # The client resolved to a proxy: never its address.
    assert throttle_keys("10.1.2.3", proxies, "apa", True) == [username_key("apa")]
    assert throttle_keys("10.1.2.3", proxies, None, False) == []


def test_credentials_know_their_names() -> None:
    credentials = Credentials([login("apa", "banan")])
    assert credentials.knows(b"apa") and not credentials.knows(b"ap")
