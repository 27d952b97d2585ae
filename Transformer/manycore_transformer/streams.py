"""The stream registry: which X-Stream-Id a feedback tag's stream hash stands for.

A tagged return path has room for four octets of SHA-256(X-Stream-Id), not the stream id
itself (``manycore_common.feedbacktag``), so MxServer finds the id of an event's stream in the
Redis hash ``MANYCORE-FEEDBACK-STREAMS`` (``keyspace.Keyspace.feedback_streams``; stream hash →
stream id). The Transformer writes a stream's field before it hands over the first message it
minted for that stream, and remembers the streams it wrote (a bounded LRU), so a message of a
known stream costs no Redis command at all. The hash grows by one field per stream id ever
used, not per message.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

from redis.asyncio import Redis

from manycore_common import feedbacktag, keyspace

log = logging.getLogger(__name__)

#: Stream ids remembered per process. Beyond that the least recently used ones are written
#: again when they next appear (HSET of the same value: harmless).
CAPACITY = 10_000


class StreamRegistry:
    def __init__(self, redis: Redis, capacity: int = CAPACITY) -> None:
        self.redis = redis
        self.capacity = capacity
        self._known: OrderedDict[str, None] = OrderedDict()

    def unknown(self, stream_ids: Iterable[str | None]) -> dict[str, str]:
        """field → stream id for those not written yet by this process; the known ones count
        as used (LRU)."""
        new: dict[str, str] = {}
        for stream_id in stream_ids:
            if not stream_id:
                continue
            if stream_id in self._known:
                self._known.move_to_end(stream_id)
            else:
                new[feedbacktag.stream_field(stream_id)] = stream_id
        return new

    def remember(self, stream_ids: Iterable[str]) -> None:
        for stream_id in stream_ids:
            self._known[stream_id] = None
            self._known.move_to_end(stream_id)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)

    async def ensure(self, stream_ids: Iterable[str | None]) -> list[str]:
        """Write the fields of streams not known yet, in one round trip; returns the stream
        ids whose hash another stream id already had (four octets collide now and then: that
        stream's events may then name the other one). Raises RedisError, remembering
        nothing, when the write fails."""
        new = self.unknown(stream_ids)
        if not new:
            return []
        fields = list(new)
        pipe = self.redis.pipeline(transaction=True)
        key = keyspace.current().feedback_streams()
        pipe.hmget(key, fields)
        pipe.hset(key, items=[x for pair in new.items() for x in pair])
        before, _ = await pipe.execute()
        self.remember(new.values())
        clashes = [
            new[f] for f, old in zip(fields, before, strict=True) if old and _text(old) != new[f]
        ]
        if clashes:
            log.warning("stream hash collision", extra={"stream_ids": clashes})
        return clashes


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
