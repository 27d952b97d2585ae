"""Growth: what the queue costs Redis when Redis also stores many unrelated keys (issue 17).

Two private redis-servers run side by side: one holds only the queues (the baseline), the
other the same queues plus N unrelated keys made with ``DEBUG POPULATE`` (1M, then 3M). On
both, each of the four queues of the example config has 100 items waiting and 8 live
consumers holding 2 items each. Measured, round after round on one server then the other
(so drift in the machine's load hits both alike), medians:

* ``reap``: one ``ReliableQueue.reap()`` (every consumer runs one per queue every third of
  the heartbeat timeout);
* ``exporter``: one reading of the Redis module's gauges (``exporter.read``, four queues);
* ``push``: one 5 KB item pushed by a receiver (``ReliableQueue.push`` with a high-water mark);
* ``scan (before)``: what reap and the gauges did before the registry, one SCAN over the
  queue's processing lists, for comparison;
* ``lookups (floor)``: 61 LLENs in one pipeline, the price of key lookups alone (below).

Three figures per case: calls/s seen by the client; Redis' own time per call (the sum of
``INFO commandstats`` usec), which is what a busy Redis cannot spend on anything else; and
Redis commands per call (the same stats' calls, scripts' own calls included), which shows
whether the work grows with the keys or only each command's price. The goal is a ratio
within 10% of the empty case (1.0 means no growth). A lookup of one key does cost more in
a Redis with millions of keys (measured: LLEN 0.8 µs empty, 1.3 µs with 1M keys, the same
key over and over), so an operation made of many small lookups, like the exporter's
reading, shows more Redis time per call with the same commands.

    python -m bench.growth                  # 0 vs 1M and 3M keys (make bench)
    python -m bench.growth --keys 300000    # 0 vs 300k keys only
    python -m bench.growth --quick          # 0 vs 20k keys, short rounds (make test)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench.common import LOOPBACK, Row, binary, free_port, port_open, table, write
from manycore_common import item as item_format
from manycore_common import keyspace
from manycore_common.queue import ReliableQueue
from manycore_redis import exporter

#: The queue names of the example global config (README gauges).
QUEUES = ("IB-MAIL-QUEUE-P0", "IB-MAIL-QUEUE-P1", "INCOMING-TO-POSTFIX", "EVENT_QUEUE")
GAUGES = dict(zip(("primary", "default", "to_postfix", "events"), QUEUES, strict=True))
CONSUMERS, HELD, WAITING = 8, 2, 100
PAYLOAD = b"x" * 5000

Op = Callable[[Redis], Awaitable[object]]


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    """A private redis-server (no persistence: the populated keys are not the subject)."""
    port = free_port()
    directory.mkdir(parents=True)
    argv = [binary("redis-server"), "--port", str(port), "--bind", LOOPBACK,
            "--dir", str(directory), "--save", "", "--appendonly", "no",
            "--enable-debug-command", "local",
            "--logfile", str(directory / "redis.log")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bench.growth: redis-server did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


async def prepare_queues(redis: Redis) -> None:
    for name in QUEUES:
        queue = ReliableQueue(redis, name)
        await queue.push_many(
            [
                item_format.new_item(PAYLOAD, source="bench", uuid=f"u{i}")
                for i in range(WAITING + CONSUMERS * HELD)
            ]
        )
        for n in range(CONSUMERS):
            consumer = queue.consumer(f"bench-{n}")
            await consumer.register()
            assert len(await consumer.take_batch(HELD, timeout=0)) == HELD


async def heartbeat(redis: Redis) -> None:
    """Keep the bench consumers alive, so reap finds nobody to reap (the steady state)."""
    for name in QUEUES:
        queue = ReliableQueue(redis, name)
        for n in range(CONSUMERS):
            await queue.consumer(f"bench-{n}").register()


async def op_reap(redis: Redis) -> object:
    return await ReliableQueue(redis, QUEUES[1]).reap()


async def op_exporter(redis: Redis) -> object:
    return await exporter.read(redis, GAUGES)


_ITEM = item_format.new_item(PAYLOAD, source="bench", uuid="push")


async def op_push(redis: Redis) -> object:
    return await ReliableQueue(redis, "BENCH-PUSH", high_water_mark=1_000_000).push(_ITEM)


async def op_scan_before(redis: Redis) -> object:
    """The processing_size of before the registry: SCAN the keyspace for the lists."""
    total = 0
    async for key in redis.scan_iter(match=f"{{{QUEUES[1]}}}:processing:*", count=500):
        total += int(await redis.llen(key))
    return total


async def op_lookups(redis: Redis) -> object:
    """The floor: 61 LLENs (the exporter's count) of the queues' own lists in one pipeline,
    nothing else. Every command that names a key looks it up in Redis' main hash table,
    and a lookup costs more once that table outgrows the CPU caches, whatever the key layout
    (measured on one server: LLEN 0.18 µs with 60 keys, 0.30 µs with 1M and 2M more). The
    other rows' Redis time is read against this row's."""
    ks = keyspace.current()
    names = [ks.queue(q) for q in QUEUES]
    keys = [*names, *(ks.processing(q, f"bench-{n}") for q in names for n in range(CONSUMERS))]
    pipe = redis.pipeline(transaction=False)
    for i in range(61):
        pipe.llen(keys[i % len(keys)])
    return await pipe.execute()


OPS: dict[str, Op] = {
    "lookups (floor)": op_lookups,
    "reap": op_reap,
    "exporter": op_exporter,
    "push": op_push,
    "scan (before)": op_scan_before,
}


async def server_usage(redis: Redis) -> tuple[int, int]:
    """Redis time spent on commands, and how many, since the last CONFIG RESETSTAT (this INFO
    is not yet counted when it reports; the RESETSTAT itself is left out)."""
    stats = await redis.info("commandstats")
    counted = [
        v for k, v in stats.items() if isinstance(v, dict) and not k.startswith("cmdstat_config")
    ]
    return sum(int(v["usec"]) for v in counted), sum(int(v["calls"]) for v in counted)


@dataclass
class Sample:
    rate: float  # calls/s seen by the client
    usec: float  # Redis time per call
    commands: float  # Redis commands per call (scripts' own calls included)


async def sample(redis: Redis, op: Op, seconds: float) -> Sample:
    await op(redis)  # warm up (script load)
    await redis.config_resetstat()
    count, start = 0, time.perf_counter()
    while True:
        await op(redis)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    used, commands = await server_usage(redis)
    await redis.delete("BENCH-PUSH")
    return Sample(count / elapsed, used / count, commands / count)


async def compare(full: Redis, empty: Redis, keys: int, seconds: float, rounds: int) -> list[Row]:
    rows = []
    for name, op in OPS.items():
        pairs = []
        for _ in range(rounds):
            await heartbeat(full)
            await heartbeat(empty)
            pairs.append((await sample(full, op, seconds), await sample(empty, op, seconds)))
        rates = [(a.rate, b.rate) for a, b in pairs]
        rows.append(_row(f"{name} calls/s", "calls/s", rates, keys, statistics.median))
        usecs = [(a.usec, b.usec) for a, b in pairs]
        rows.append(_row(f"{name} Redis us", "us/call", usecs, keys, min))
        commands = [(a.commands, b.commands) for a, b in pairs]
        rows.append(_row(f"{name} commands", "commands/call", commands, keys, statistics.median))
    return rows


def _row(
    case: str,
    unit: str,
    pairs: list[tuple[float, float]],
    keys: int,
    pick: Callable[[list[float]], float],
) -> Row:
    """``pick``: the median for client rates; the minimum for Redis time, which the other
    processes on a shared machine can only add to (preemption inside a command)."""
    subject = pick([a for a, _ in pairs])
    baseline = pick([b for _, b in pairs])
    return Row(
        benchmark="growth",
        case=case,
        subject=f"{keys:,} unrelated keys",
        subject_rate=subject,
        baseline="queues only",
        baseline_rate=baseline,
        ratio=subject / baseline if baseline else float("nan"),
        unit=unit,
    )


async def run(key_counts: list[int], seconds: float, rounds: int) -> list[Row]:
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp,
        redis_server(Path(tmp) / "full") as full_port,
        redis_server(Path(tmp) / "empty") as empty_port,
    ):
        full = Redis(host=LOOPBACK, port=full_port)
        empty = Redis(host=LOOPBACK, port=empty_port)
        try:
            for redis in (full, empty):
                await prepare_queues(redis)
            for keys in key_counts:
                started = time.monotonic()
                # POPULATE skips keys that exist: 1M then 3M adds 2M. Plain key:<n> strings.
                await full.execute_command("DEBUG", "POPULATE", keys, "key", 10)  # type: ignore[no-untyped-call]
                print(f"populated {keys:,} keys in {time.monotonic() - started:.1f} s", flush=True)
                rows += await compare(full, empty, keys, seconds, rounds)
        finally:
            await full.aclose()
            await empty.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.growth", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k keys, short")
    parser.add_argument("--keys", type=int, action="append", help="key counts (repeatable)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per round and case")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        counts, seconds, rounds = [20_000], 0.2, 2
    else:
        counts, seconds, rounds = args.keys or [1_000_000, 3_000_000], args.seconds, args.rounds
    rows = asyncio.run(run(sorted(counts), seconds, rounds))
    print(table(rows))
    if not args.quick:
        notes = (
            "Queue cost with N unrelated keys in Redis vs. without (ratio 1.0 = no growth). "
            "calls/s: client view (median of rounds); Redis us/call: INFO commandstats time "
            "per call (least of rounds: preemption by other processes only adds to it). "
            "'scan (before)' is the SCAN that reap and the gauges did before the registry."
        )
        json_path, md_path = write("growth", rows, notes)
        print(f"results: {json_path} {md_path}")


if __name__ == "__main__":
    main()
