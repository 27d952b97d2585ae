"""Suppression list: Redis bytes per entry, CSV import time, and the Transformer's throughput
with the list full against no list at all.

* bytes/entry: ``used_memory`` of a private redis-server after importing N entries (one
  sending domain, addresses of 35-40 octets, RFC 4122 uuids) minus before, over N;
* import: ``manycore-suppressions import``'s code path (``suppressioncli.import_file``) on a
  CSV of N lines;
* throughput: batches of 16 messages (the default batch-size; 5 KB, 2 recipients) through
  the suppression check and the transform (RSA-2048), in one process on one core (Redis on
  the other), interleaved with the same batches transformed without the check; with N
  entries on the list (none of them these recipients). The check runs as the Transformer's
  Worker runs it (look-up sent, batch transformed, answer read: "overlapped") and, for
  comparison, awaited before the transform ("serial").

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
from dataclasses import dataclass, field
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


#: The throughput arms: the check as the Transformer makes it (look-up sent, batch signed,
#: answer read), the check before the transform (the order before 2026-12-02), no check.
MODES = ("overlapped", "serial", "none")


async def throughput(redis: Redis, seconds: float, rounds: int) -> dict[str, Arm]:
    _, settings = setup()
    checker = Checker(SuppressionStore(redis), SuppressionSettings())
    data = message(5000)
    jobs = [(data, (f"new{i}@example.org", f"other{i}@example.net")) for i in range(BATCH)]

    async def batch(mode: str) -> None:
        now = time.time()
        verdicts = await checker.check(jobs) if mode == "serial" else []
        pending = await checker.send(jobs) if mode == "overlapped" else None
        for payload, rcpts in jobs:
            transform(payload, settings, now, rcpts)
        if pending is not None:
            verdicts = await pending.verdicts()
        assert all(v.keep is None for v in verdicts)

    async def rate(mode: str, arm: Arm) -> None:
        """Messages per wall-clock second and per CPU second of this process (other
        processes on a shared machine slow the first, not the second), and each batch's
        CPU seconds."""
        await batch(mode)
        count, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            before = time.process_time()
            await batch(mode)
            arm.batch_cpu.append(time.process_time() - before)
            count += BATCH
        arm.wall.append(count / (time.perf_counter() - start))
        arm.cpu.append(count / (time.process_time() - cpu))

    arms = {mode: Arm() for mode in MODES}
    for n in range(rounds):
        # Rotated, so that no arm always follows the same one.
        for mode in MODES[n % 3 :] + MODES[: n % 3]:
            await rate(mode, arms[mode])
    return arms


@dataclass
class Arm:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    batch_cpu: list[float] = field(default_factory=list)

    def ratios(self, base: Arm) -> tuple[float, float]:
        """Median per-round (wall-clock, CPU) ratios to ``base``'s same round."""
        wall = [a / b for a, b in zip(self.wall, base.wall, strict=True)]
        cpu = [a / b for a, b in zip(self.cpu, base.cpu, strict=True)]
        return statistics.median(wall), statistics.median(cpu)

    def per_message_us(self) -> tuple[float, float]:
        """CPU µs per message: (median, p10) over batches."""
        ordered = sorted(self.batch_cpu)
        return ordered[len(ordered) // 2] / BATCH * 1e6, ordered[len(ordered) // 10] / BATCH * 1e6


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
        return import_seconds, per_entry, encoding, await throughput(redis, seconds, rounds)
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
    import_seconds, per_entry, encoding, arms = result
    base = arms["none"]
    rows = [
        Row(
            "suppression",
            f"{n:,} entries",
            f"check {mode} + transform",
            statistics.median(arms[mode].wall),
            "transform, no check",
            statistics.median(base.wall),
            arms[mode].ratios(base)[0],
        )
        for mode in ("overlapped", "serial")
    ]
    load = os.getloadavg()
    notes = [
        f"measured on core {core}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1 / 5 / 15 min) on {os.cpu_count()} cores",
        f"{n:,} entries: {per_entry:.1f} bytes per entry (used_memory; bucket encoding "
        f"{encoding.decode() if isinstance(encoding, bytes) else encoding})",
        *(
            f"check {mode}: per CPU second of the Transformer's process ratio "
            f"{arms[mode].ratios(base)[1]:.3f}, wall clock {arms[mode].ratios(base)[0]:.3f}"
            for mode in ("overlapped", "serial")
        ),
        "CPU per message (median / p10 over batches, µs): "
        + ", ".join(
            f"{mode} {arms[mode].per_message_us()[0]:.0f} / {arms[mode].per_message_us()[1]:.0f}"
            for mode in MODES
        ),
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
            "suppression check against the list full (as the Transformer makes it, the look-up "
            "overlapping the transform; and before the transform, as until 2026-12-02) and "
            "without the check, medians of 11 rotated 1-second rounds.\n\n"
            + "\n".join(f"- {x}" for x in notes),
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
