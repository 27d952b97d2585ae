"""Retention: Redis bytes PostfixLog keeps per delivered message after its final events, and
the steady-state memory that implies (issue 17 item 2).

A private redis-server; PostfixLog's real state scripts (``manycore_postfixlog.state``) run
for N messages the way a feeder and the log processor do: claim, record (which acks the
item in the same step), one final event per recipient. The events are then taken away (the
event queue is BackData's, not retention). Measured with ``INFO memory`` (``used_memory``
before and after) and ``MEMORY USAGE`` of one message's keys:

* during the replay window: what is kept per message (the queue id → message hash and the
  "already injected" marker), and so at 100 msg/s: bytes × 100 × window;
* after the window: what is left (nothing: every key expired), checked with a short window;
* for comparison, before this change: the marker lived ``maximal_queue_lifetime`` + 1 day
  (6 days by default) and the hash one hour after the last final event.

    python -m bench.retention            # 5,000 messages, 2 recipients each (make bench)
    python -m bench.retention --quick    # 300 messages (make test)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from redis.asyncio import Redis

from bench.common import LOOPBACK, Row, binary, free_port, port_open, table, write
from manycore_common import item as item_format
from manycore_postfixlog.state import REPLAY_WINDOW, Held, Message, State

STATE_TTL = 6 * 86400  # maximal_queue_lifetime 5d + the 1 day margin (the defaults)
OLD_DONE_TTL = 3600  # how long the hash was kept after the last final event, before
RATE = 100  # msg/s, the figure
PROCESSING = "{INCOMING-TO-POSTFIX}:processing:bench"


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", LOOPBACK,
            "--dir", str(directory), "--save", "", "--appendonly", "no",
            "--logfile", str(directory / "redis.log")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bench.retention: redis-server did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


async def deliver(state: State, redis: Redis, n: int, rcpts: int) -> None:
    """N messages through claim → record (+ack) → final events, as PostfixLog does them."""
    for i in range(n):
        uuid = f"m{i:07d}"
        raw = item_format.new_item(b"x" * 5000, source="transformer", uuid=uuid)
        item_id = item_format.decode(raw).id or uuid
        await redis.lpush(PROCESSING, raw)
        claimer = f"postfixlog:pod-0:1:abcd/{i:08x}"
        claim = await state.claim(item_id, claimer, time.monotonic())
        assert claim.status == "mine"
        addresses = tuple(f"rcpt{r}-{i}@example.net" for r in range(rcpts))
        msg = Message(uuid, "stream-1", "example.com", f"bounce-{uuid}@b.example.com",
                      addresses, item_id)  # fmt: skip
        queue_id = f"4jfSKp{i:09d}"
        assert await state.record(item_id, queue_id, msg, [], Held(claimer, PROCESSING, raw))
        for address in addresses:
            assert await state.final(queue_id, address, b"event") == 1
    await redis.delete("EVENT_QUEUE")


async def per_message_keys(state: State, redis: Redis) -> tuple[int, int]:
    """MEMORY USAGE of the last message's hash and marker."""
    keys = [k async for k in redis.scan_iter(match="postfixlog:*", count=1000)]
    hashes = [k for k in keys if b":msg:" in k]
    markers = [k for k in keys if k.startswith(b"postfixlog:item:")]
    hash_bytes = int(await redis.memory_usage(hashes[-1]) or 0)
    marker_bytes = int(await redis.memory_usage(markers[-1]) or 0)
    return hash_bytes, marker_bytes


async def measure(n: int, rcpts: int) -> tuple[float, int, int, float]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp,
        redis_server(Path(tmp)) as port,
    ):
        redis = Redis(host=LOOPBACK, port=port)
        try:
            state = State(redis, "pod-0", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", STATE_TTL)
            before = int((await redis.info("memory"))["used_memory"])
            await deliver(state, redis, n, rcpts)
            after = int((await redis.info("memory"))["used_memory"])
            hash_bytes, marker_bytes = await per_message_keys(state, redis)
            assert await redis.llen(PROCESSING) == 0, "the record acks every item"
            # After the window: a state with a one-second window, and what is left.
            short = State(redis, "pod-1", "EVENT_QUEUE", "INCOMING-TO-POSTFIX", STATE_TTL,
                          replay_window=1)  # fmt: skip
            await redis.flushall()
            await deliver(short, redis, min(n, 200), rcpts)
            await asyncio.sleep(2.5)
            keys = [k async for k in redis.scan_iter(match="postfixlog:*", count=1000)]
            left = len(keys) / min(n, 200)
        finally:
            await redis.aclose()
    return (after - before) / n, hash_bytes, marker_bytes, left


def rows_for(per_msg: float, hash_bytes: int, marker_bytes: int, left: float) -> list[Row]:
    window = REPLAY_WINDOW
    new_steady = per_msg * RATE * window
    old_steady = marker_bytes * RATE * STATE_TTL + hash_bytes * RATE * OLD_DONE_TTL

    def row(case: str, new: float, old: float, unit: str) -> Row:
        return Row("retention", case, "replay window", new, "before", old,
                   new / old if old else 0.0, unit)  # fmt: skip

    return [
        row("bytes kept per message, in window", per_msg, per_msg, "bytes"),
        row("keys left per message after it", left, 1, "keys"),
        row(f"steady state at {RATE} msg/s", new_steady / 2**20, old_steady / 2**20, "MiB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.retention", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 messages")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--recipients", type=int, default=2)
    args = parser.parse_args()
    n = 300 if args.quick else args.messages
    per_msg, hash_bytes, marker_bytes, left = asyncio.run(measure(n, args.recipients))
    rows = rows_for(per_msg, hash_bytes, marker_bytes, left)
    print(f"{n} messages, {args.recipients} recipients each; hash {hash_bytes} B, "
          f"marker {marker_bytes} B (MEMORY USAGE); window {REPLAY_WINDOW} s, "
          f"before: marker {STATE_TTL} s, hash {OLD_DONE_TTL} s")  # fmt: skip
    print(table(rows))
    if not args.quick:
        notes = (
            "Redis bytes PostfixLog keeps per delivered message after its final events "
            f"(used_memory delta / messages), and at {RATE} msg/s: bytes x rate x lifetime. "
            "'before': the marker lived maximal_queue_lifetime + 1 day, the hash 1 h."
        )
        json_path, md_path = write("retention", rows, notes)
        print(f"results: {json_path} {md_path}")


if __name__ == "__main__":
    main()
