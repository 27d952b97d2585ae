"""Failed-login throttling of both front doors (HttpReceiver's Basic auth, the Receiver's SMTP
AUTH): what a failure counts against, and what a lock refuses. ``attempt_key`` is pure;
``LoginThrottle`` holds the counters. "Refused" is 429 over HTTP and ``454 4.7.0`` over SMTP
(RFC 4954 §6: temporary authentication failure); a wrong password is 401 or ``535 5.7.8``.

Threat model. The attacker can send any number of requests, from one address or many, knows
(or guesses) our login names, and may share its address with our clients: in production an
ingress or load balancer that SNATs gives every client the same address (HttpReceiver reads
the client behind ``trusted-proxies`` from X-Forwarded-For; SMTP has no such header). What
the attacker must not get is (a) unbounded online guessing of a password, and (b) a way to
lock a legitimate client out. The rules:

* Guesses at a configured login name count per (client address, login name). After
  ``max-failures`` in ``window-seconds`` that pair is refused for ``lockout-seconds``
  without checking the password; every failure also delays the pair's next answer. Online
  guessing is thus bounded to ``max-failures`` per window per pair, however many requests or
  connections run in parallel (the lock is checked again right before the password, with no
  await between the check and the record). Failures at one pair never refuse any other: the
  same login from another address, or another login from the same address, with a correct
  password, always gets in. The per-login counter of earlier versions is gone: it let anyone
  who knew a login name lock that customer out everywhere.
* Login names that are no login count per client address only, up to the much higher
  ``max-unknown-login-failures`` (name spraying, scanners). A locked address is refused for
  unknown names, and any wrong password from it is refused too, so "refused" against "wrong"
  does not tell which names exist; but a correct password for a configured login is checked
  and let in whatever that address did. HttpReceiver does not count failures per address at
  all when the client is one of its proxies' own addresses (X-Forwarded-For named no other):
  that would lock out everyone behind the proxy (logged as a misconfiguration, counted in
  httpreceiver_proxy_lockouts_refused_total).

What no throttle can do: tell a guesser from the client when both use the same address and
the same login name (behind an SNAT ingress). Only the password tells them apart, and a lock
that still lets the right password in answers every guess (success or not): guessing would be
unbounded. So that one pair is locked for everyone on it: a guesser behind the same SNAT
address can hold that login's clients behind it out for ``lockout-seconds`` at a time, and
nobody else. Keep client addresses visible (HttpReceiver: ``trusted-proxies`` set to the
ingress pods; SMTP: a load balancer that keeps the source address), and give logins long
random passwords: a guesser with N addresses gets N × ``max-failures`` guesses per window.
"""

from __future__ import annotations

from .auth import FailureThrottle
from .config import AuthThrottle


def attempt_key(client: str, login: str | None, known: bool, client_is_proxy: bool) -> str | None:
    """What a failure of this attempt counts against (pure): the (address, login) pair for a
    configured login name, the address for any other name (or no readable credentials),
    nothing for a proxy's own address with an unknown name."""
    if known and login is not None:
        # NUL: in neither an address nor a login of the config, so pairs cannot collide.
        return f"pair:{client}\0{login}"
    return None if client_is_proxy else address_key(client)


def address_key(client: str) -> str:
    return f"addr:{client}"


class LoginThrottle:
    """The two counters: per (address, login) pair, and per address for unknown names."""

    def __init__(self, settings: AuthThrottle, *, max_clients: int = 100_000) -> None:
        self.pairs = FailureThrottle(settings, max_clients=max_clients)
        unknown = settings.model_copy(update={"max_failures": settings.max_unknown_login_failures})
        self.unknown = FailureThrottle(unknown, max_clients=max_clients)

    def counter(self, key: str) -> FailureThrottle:
        return self.pairs if key.startswith("pair:") else self.unknown

    def locked_for(self, key: str | None) -> float:
        return 0.0 if key is None else self.counter(key).locked_for(key)

    def delay_for(self, key: str | None) -> float:
        return 0.0 if key is None else self.counter(key).delay_for(key)

    def failure(self, key: str | None, client: str, client_is_proxy: bool) -> float:
        """Record a failed attempt. Returns the seconds to answer it as refused (429, 454)
        rather than wrong (401, 535): a wrong password for a configured login from an address
        locked for unknown names (so that the answer does not tell which names exist), else 0.
        The failure that starts a lock is answered as wrong, as every one before it."""
        if key is not None:
            self.counter(key).failure(key)
        if key is None or not key.startswith("pair:") or client_is_proxy:
            return 0.0
        return self.unknown.locked_for(address_key(client))
