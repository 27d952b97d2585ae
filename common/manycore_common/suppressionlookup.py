"""The suppression look-up's one command per batch, sent pre-packed on a held connection.

Why: the Transformer makes this call for every batch it signs, and through redis-py's command
path (each argument packed in Python, the pool's bookkeeping on every checkout, the script
object's NOSCRIPT retry) it cost about 1.7 times the CPU of the same EVALSHA written as one
bytes object on a connection the caller keeps (README.md, "Suppression list"). Replies are
still read by redis-py (hiredis), with the client's socket timeout and health checks.

The connections come from the client's own pool and stay checked out, so the client's
``aclose()`` closes them with the rest; one per concurrent caller (the Transformer's
workers share one ``SuppressionStore``). A connection that failed is disconnected before it
is used again (redis-py reconnects it, asking the sentinels anew when there are some), so a
reply can never be read by the wrong call; a call that finds its connection closed is sent
once more on a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError


def packed_evalsha(sha: bytes, keys: Sequence[bytes], blob: bytes) -> bytes:
    """``EVALSHA sha len(keys) *keys blob`` as RESP (a multi-bulk request, RESP2 and RESP3
    alike): one join rather than redis-py's per-argument packing."""
    parts = [b"EVALSHA", sha, b"%d" % len(keys), *keys, blob]
    out = [b"*%d\r\n" % len(parts)]
    out += [b"$%d\r\n%s\r\n" % (len(part), part) for part in parts]
    return b"".join(out)


class HeldScript:
    """Calls one registered script with bytes keys and one bytes argument."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self.redis = redis
        self.script = script
        self.sha = script.sha.encode() if isinstance(script.sha, str) else script.sha
        self._idle: list[Any] = []

    async def __call__(self, keys: Sequence[bytes], blob: bytes) -> Any:
        try:
            return await self._call(keys, blob)
        except RedisConnectionError:
            # A held connection is not checked before use, as the pool checks the ones it
            # hands out: after a Redis restart or failover the first call on it finds the
            # socket closed. The script only reads, so it is sent again, once, on a new
            # connection; a second failure is Redis being down, for the caller to handle.
            return await self._call(keys, blob)

    async def _call(self, keys: Sequence[bytes], blob: bytes) -> Any:
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed_evalsha(self.sha, keys, blob))
            reply = await conn.read_response()
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: the reply was read whole, the connection is
            # fine. redis-py's script object loads the script and runs it.
            self._idle.append(conn)
            return await self.script(keys=list(keys), args=[blob])
        except BaseException:
            # Whatever was sent may still be answered: never read on this socket again.
            await conn.disconnect(nowait=True)
            self._idle.append(conn)
            raise
        self._idle.append(conn)
        return reply
