"""Per-client bounds of MxServer: messages per client address in a window, and connections
open at once per client address. Plain in-memory bookkeeping, bounded in size itself."""

from __future__ import annotations

import time
from collections import OrderedDict, deque


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


class ConnectionLimiter:
    """Connections open at once per client address. Only open connections are kept, so the
    table is never larger than the number of connections."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._open: dict[str, int] = {}

    def acquire(self, client: str) -> bool:
        count = self._open.get(client, 0)
        if count >= self.per_client:
            return False
        self._open[client] = count + 1
        return True

    def release(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)
