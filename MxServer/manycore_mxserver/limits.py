"""Bounds of MxServer: messages per client address in a window, connections open at once
per client address and in all, messages in flight. Plain in-memory bookkeeping, bounded in
size itself."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque


def client_key(address: str) -> str:
    """What the per-client limits count by: the IPv4 address, or the /64 of an IPv6 one
    (one subscriber gets a whole /64, RFC 6177, and could otherwise take every address in
    it)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


class RateLimiter:
    """Messages per client address in a sliding window, for a bounded number of addresses."""

    def __init__(self, messages: int, window: float, max_clients: int = 50_000) -> None:
        self.messages = messages
        self.window = window
        self.max_clients = max_clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        stamps = self._seen.pop(client, None) or deque()
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        allowed = len(stamps) < self.messages
        if allowed:
            stamps.append(now)
        self._seen[client] = stamps
        while len(self._seen) > self.max_clients:
            self._seen.popitem(last=False)
        return allowed

    def give_back(self, client: str) -> None:
        """Forget ``client``'s newest allowed message: it was not done after all (a write
        that failed is retried by the sender and must not count twice)."""
        stamps = self._seen.get(client)
        if stamps:
            stamps.pop()


class ConnectionLimiter:
    """Connections open at once, per client address and in all. Only open connections are
    kept, so the table is never larger than the number of connections. The total cap is what
    bounds the listener against many addresses at once (a botnet stays under any per-address
    limit): each open connection may buffer a command line of ``max-line-length`` octets."""

    def __init__(self, per_client: int, total: int | None = None) -> None:
        self.per_client = per_client
        self.total = total
        self.open = 0
        self._open: dict[str, int] = {}

    def acquire(self, client: str) -> str | None:
        """None when the connection may proceed, else why not ("total" or "client")."""
        if self.total is not None and self.open >= self.total:
            return "total"
        count = self._open.get(client, 0)
        if count >= self.per_client:
            return "client"
        self._open[client] = count + 1
        self.open += 1
        return None

    def release(self, client: str) -> None:
        if client not in self._open:
            return
        self.open -= 1
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)


class Slots:
    """At most ``size`` of something at once: take() is False when all are taken."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.taken = 0

    def take(self) -> bool:
        if self.taken >= self.size:
            return False
        self.taken += 1
        return True

    def release(self) -> None:
        self.taken = max(0, self.taken - 1)
