"""The suppression look-up's one command per batch, sent pre-packed on a held connection.

Why: the Transformer makes this call for every batch it signs, and through redis-py's command
path (each argument packed in Python, the pool's bookkeeping on every checkout, the script
object's NOSCRIPT retry) it cost about 1.7 times the CPU of the same EVALSHA written as one
bytes object on a connection the caller keeps (README.md, "Suppression list"). Replies are
still read by redis-py (hiredis), with the client's socket timeout and health checks.

The Transformer sends it before it signs the batch and reads the reply after (``send``, then
``Sent.reply``), so it never waits on Redis for it (README.md, "Suppression list").

The connections come from the client's own pool and stay checked out, so the client's
``aclose()`` closes them with the rest; one per concurrent caller (the Transformer's
workers share one ``SuppressionStore``). A connection that failed is disconnected before it
is used again (redis-py reconnects it, asking the sentinels anew when there are some), so a
reply can never be read by the wrong call.

A held connection is not checked before use, as the pool checks those it hands out: after a
Redis restart or failover the first call on it finds the socket closed. The script only
reads, so such a call is sent once more on a new connection; a second failure is Redis being
down, for the caller to handle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from . import suppression as s


def packed_evalsha(sha: bytes, keys: Sequence[bytes], blob: bytes) -> bytes:
    """``EVALSHA sha len(keys) *keys blob`` as RESP (a multi-bulk request, RESP2 and RESP3
    alike): one join rather than redis-py's per-argument packing."""
    parts = [b"EVALSHA", sha, b"%d" % len(keys), *keys, blob]
    out = [b"*%d\r\n" % len(parts)]
    out += [b"$%d\r\n%s\r\n" % (len(part), part) for part in parts]
    return b"".join(out)


class Sent:
    """One call whose command is written to the socket and whose reply is not read yet: the
    caller works meanwhile (the Transformer signs the batch), then ``reply()`` reads it, once.
    A caller that will not read it calls ``abandon()``, which disconnects the connection:
    its reply must never be read as another call's."""

    def __init__(
        self, held: HeldScript, conn: Any, keys: Sequence[bytes], blob: bytes, retry: bool
    ) -> None:
        self._held = held
        self._conn: Any = conn
        self._keys = keys
        self._blob = blob
        self._retry = retry

    async def reply(self) -> Any:
        conn, self._conn = self._conn, None
        assert conn is not None, "reply read or abandoned already"
        held = self._held
        try:
            reply = await conn.read_response()
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: the reply was read whole, the connection is
            # fine. redis-py's script object loads the script and runs it.
            held.give_back(conn)
            return await held.script(keys=list(self._keys), args=[self._blob])
        except RedisConnectionError:
            await held.drop(conn)
            if not self._retry:
                raise
            return await (await held.send(self._keys, self._blob, retry=False)).reply()
        except BaseException:
            await held.drop(conn)
            raise
        held.give_back(conn)
        return reply

    async def abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._held.drop(conn)


class HeldScript:
    """Calls one registered script with bytes keys and one bytes argument: ``send`` then
    ``Sent.reply``, or both in one ``await held(keys, blob)``."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self.redis = redis
        self.script = script
        self.sha = script.sha.encode() if isinstance(script.sha, str) else script.sha
        self._idle: list[Any] = []

    async def __call__(self, keys: Sequence[bytes], blob: bytes) -> Any:
        return await (await self.send(keys, blob)).reply()

    async def send(self, keys: Sequence[bytes], blob: bytes, retry: bool = True) -> Sent:
        """Write the call; its bytes are in the kernel's socket buffer when this returns
        (redis-py writes at once and drains), so Redis runs it while the caller works.
        ``retry``: a closed connection found now or at ``reply`` is replaced once (module
        docstring)."""
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed_evalsha(self.sha, keys, blob))
        except RedisConnectionError:
            await self.drop(conn)
            if not retry:
                raise
            return await self.send(keys, blob, retry=False)
        except BaseException:
            await self.drop(conn)
            raise
        return Sent(self, conn, keys, blob, retry)

    def give_back(self, conn: Any) -> None:
        self._idle.append(conn)

    async def drop(self, conn: Any) -> None:
        """Whatever was sent may still be answered: never read on this socket again
        (redis-py connects it anew on its next use)."""
        await conn.disconnect(nowait=True)
        self._idle.append(conn)


class PendingLookup:
    """``SuppressionStore.lookup`` sent and not yet read: ``found`` reads its reply."""

    def __init__(self, queries: Sequence[tuple[str, str]], sent: Sent | None) -> None:
        self.queries = queries
        self._sent = sent

    async def found(self, now: float) -> list[tuple[str, s.Entry] | None]:
        """For each (scope, normalised address): (scope, live entry) or None."""
        if self._sent is None:
            return []
        replies = await self._sent.reply()
        out: list[tuple[str, s.Entry] | None] = []
        for (scope, _), raw in zip(self.queries, replies, strict=True):
            if raw is not None and not isinstance(raw, bytes):
                raw = str(raw).encode()
            entry = s.unpack(raw) if raw is not None else None
            out.append((scope, entry) if entry is not None and entry.active(now) else None)
        return out

    async def abandon(self) -> None:
        if self._sent is not None:
            await self._sent.abandon()
