"""Suppression list: Redis bytes per entry, CSV import time, and the Transformer's throughput
with the list full against no list at all.

* bytes/entry: ``used_memory`` of a private redis-server after importing N entries (one
  sending domain, addresses of 35-40 octets, RFC 4122 uuids) minus before, over N;
* import: ``manycore-suppressions import``'s code path (``suppressioncli.import_file``) on a
  CSV of N lines;
* throughput: batches of 16 messages (the default batch-size; 5 KB, 2 recipients) through
  the suppression check and the transform (RSA-2048), in one process on one core (Redis on
  the other), interleaved with the same batches transformed without the check; with N
  entries on the list (none of them these recipients).

    python -m bench.suppression            # N = 1,000,000 (make bench)
    python -m bench.suppression --quick    # N = 20,000 smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import statistics
import subprocess
import tempfile
import time
import uuid as uuid_module
from argparse import Namespace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import LOOPBACK, Row, binary, free_port, pin_to_one_core, table, write
from bench.transformer import message, setup
from manycore_common import suppression as s
from manycore_common.config import SuppressionSettings
from manycore_common.suppressioncli import import_file
from manycore_common.suppressionstore import Op, SuppressionStore
from manycore_transformer.suppress import Checker
from manycore_transformer.transform import transform

#: The Transformer's default batch-size.
BATCH = 16
#: The median per-CPU-second ratio of the last throughput run (for the notes).
CPU_RATIO: list[float] = []
DOMAIN = "shop.example"


def csv_text(n: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["address", "domain", "reason"])
    for i in range(n):
        writer.writerow([f"customer.{i:07d}@mail{i % 997}.example.net", DOMAIN, "hard-bounce"])
    return out.getvalue()


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def fill(redis: Redis, n: int) -> tuple[float, float]:
    """(import seconds of an N-line CSV, bytes per entry once uuids and sources are set)."""
    store = SuppressionStore(redis)
    before = await used_memory(redis)
    args = Namespace(domain=None, reason="manual")
    source = io.StringIO(csv_text(n))
    started = time.perf_counter()
    rows, added = await import_file(store, source, args, SuppressionSettings())
    seconds = time.perf_counter() - started
    assert rows == added == n, (rows, added)
    # Entries written by events carry a uuid and a source id: measure those (rewritten).
    now = time.time()
    ops = [
        Op(
            DOMAIN,
            f"customer.{i:07d}@mail{i % 997}.example.net",
            s.new_entry("hard-bounce", now, 365, uuid_module.uuid4().hex, str(uuid_module.uuid4())),
        )
        for i in range(n)
    ]
    await store.add(ops, chunk=2000)
    await redis.memory_purge()
    return seconds, (await used_memory(redis) - before) / n


async def throughput(redis: Redis, seconds: float, rounds: int) -> tuple[float, float, float]:
    _, settings = setup()
    checker = Checker(SuppressionStore(redis), SuppressionSettings())
    data = message(5000)
    jobs = [(data, (f"new{i}@example.org", f"other{i}@example.net")) for i in range(BATCH)]

    async def batch(check: bool) -> None:
        verdicts = await checker.check(jobs) if check else []
        assert all(v.keep is None for v in verdicts)
        now = time.time()
        for payload, rcpts in jobs:
            transform(payload, settings, now, rcpts)

    async def rate(check: bool) -> tuple[float, float]:
        """(messages per wall-clock second, per CPU second of this process): other
        processes on a shared machine slow the first, not the second."""
        await batch(check)
        count, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            await batch(check)
            count += BATCH
        return count / (time.perf_counter() - start), count / (time.process_time() - cpu)

    with_list, without, ratios, cpu_ratios = [], [], [], []
    for _ in range(rounds):
        (a, a_cpu), (b, b_cpu) = await rate(True), await rate(False)
        with_list.append(a)
        without.append(b)
        ratios.append(a / b)
        cpu_ratios.append(a_cpu / b_cpu)
    CPU_RATIO.append(statistics.median(cpu_ratios))
    return statistics.median(with_list), statistics.median(without), statistics.median(ratios)


async def measure(port: int, n: int, seconds: float, rounds: int) -> tuple[Any, ...]:
    redis = Redis(host=LOOPBACK, port=port)
    try:
        for _ in range(100):
            try:
                await redis.ping()
                break
            except OSError:
                await asyncio.sleep(0.05)
        import_seconds, per_entry = await fill(redis, n)
        sample = s.bucket_key(DOMAIN, "customer.0000000@mail0.example.net")
        encoding = await redis.object("encoding", sample)
        return (import_seconds, per_entry, encoding, *await throughput(redis, seconds, rounds))
    finally:
        await redis.aclose()


def run(n: int, seconds: float, rounds: int, workdir: Path) -> tuple[list[Row], list[str]]:
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", LOOPBACK, "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    cores = sorted(os.sched_getaffinity(0))
    # Redis on the last core, the measured process on the first: as in a deployment, where
    # Redis is another pod, and neither slows the other down.
    server = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {cores[-1]}),
    )
    core = pin_to_one_core()
    try:
        result = asyncio.run(measure(port, n, seconds, rounds))
    finally:
        server.terminate()
        server.wait(10)
    import_seconds, per_entry, encoding, rate_with, rate_without, ratio = result
    rows = [
        Row(
            "suppression",
            f"{n:,} entries",
            "check + transform",
            rate_with,
            "transform, no check",
            rate_without,
            ratio,
        )
    ]
    notes = [
        f"measured on core {core}",
        f"{n:,} entries: {per_entry:.1f} bytes per entry (used_memory; bucket encoding "
        f"{encoding.decode() if isinstance(encoding, bytes) else encoding})",
        f"per CPU second of the Transformer's process: ratio {CPU_RATIO[-1]:.3f} "
        f"(wall-clock ratio in the table; it also counts the look-up's round trip and any "
        f"other load on the machine)",
        f"import of a {n:,}-line CSV: {import_seconds:.1f} s ({n / import_seconds:,.0f} entries/s)",
    ]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.suppression")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    n = 20_000 if args.quick else args.entries
    seconds, rounds = (0.3, 1) if args.quick else (1.0, 11)
    with tempfile.TemporaryDirectory() as workdir:
        rows, notes = run(n, seconds, rounds, Path(workdir))
    print("Suppression list:")
    print(table(rows))
    print(*notes, sep="\n")
    if not args.quick:
        paths = write(
            "suppression",
            rows,
            "Transformer messages/s (batches of 16, 2 recipients each, RSA-2048) with the "
            "suppression check against the list full and without the check, medians of 11 "
            "interleaved 1-second rounds.\n\n" + "\n".join(f"- {x}" for x in notes),
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
