"""Credential checks and throttling of failed logins, shared by both receivers."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from .config import AuthThrottle, Login


class Credentials:
    """The configured logins. ``check`` takes the same time whichever user or password is
    tried: every login is compared, each comparison is constant-time, and both sides are
    hashed first so length differences do not show either."""

    def __init__(self, logins: Iterable[Login]) -> None:
        self._entries = [
            (_digest(login.username.encode()), _digest(login.password.get_secret_value().encode()))
            for login in logins
        ]

    def knows(self, username: bytes) -> bool:
        """Whether ``username`` is a configured login (whatever the password)."""
        digest = _digest(username)
        return any(hmac.compare_digest(digest, known) for known, _ in self._entries)

    def check(self, username: bytes, password: bytes) -> bool:
        user_digest = _digest(username)
        pass_digest = _digest(password)
        ok = False
        for known_user, known_pass in self._entries:
            user_ok = hmac.compare_digest(user_digest, known_user)
            pass_ok = hmac.compare_digest(pass_digest, known_pass)
            ok |= user_ok & pass_ok
        return ok


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@dataclass
class _Record:
    failures: list[float]
    locked_until: float = 0.0


class FailureThrottle:
    """Failed logins per client address, in memory and bounded.

    After a failure the next attempt from that address waits ``delay * 2**(n-1)`` seconds
    (capped); after ``max_failures`` within the window the address is locked out. Callers
    must call ``locked_for`` again right before checking a password, in the same step as
    recording the result (no await in between): attempts that waited concurrently then
    cannot all be checked, so at most ``max_failures`` wrong passwords are ever tried per
    window. A success does not erase failures (a valid login must not launder guesses at
    other accounts); they age out with the window. At most ``max_clients`` addresses are
    tracked (least recently failed forgotten first), so memory stays bounded."""

    def __init__(self, settings: AuthThrottle, *, max_clients: int = 100_000) -> None:
        self.settings = settings
        self.max_clients = max_clients
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _recent(self, client: str, now: float) -> _Record | None:
        record = self._records.get(client)
        if record is None:
            return None
        horizon = now - self.settings.window_seconds
        record.failures = [t for t in record.failures if t > horizon]
        if not record.failures and record.locked_until <= now:
            del self._records[client]
            return None
        return record

    def locked_for(self, client: str, now: float | None = None) -> float:
        """Seconds this client is still locked out (0 if not)."""
        now = time.monotonic() if now is None else now
        record = self._recent(client, now)
        return max(0.0, record.locked_until - now) if record else 0.0

    def delay_for(self, client: str, now: float | None = None) -> float:
        """How long to wait before answering this client's next attempt."""
        now = time.monotonic() if now is None else now
        record = self._recent(client, now)
        if not record or not record.failures:
            return 0.0
        delay = self.settings.delay_seconds * 2 ** (len(record.failures) - 1)
        return float(min(delay, self.settings.max_delay_seconds))

    def failure(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        record = self._recent(client, now) or _Record(failures=[])
        record.failures.append(now)
        if len(record.failures) >= self.settings.max_failures:
            record.locked_until = now + self.settings.lockout_seconds
        self._records[client] = record
        self._records.move_to_end(client)
        while len(self._records) > self.max_clients:
            self._records.popitem(last=False)
