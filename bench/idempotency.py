"""Idempotent submission: what the check costs at ingest, and Redis bytes per remembered uuid.

Ingest: the real Receiver and HttpReceiver with the check on (the default 24 h window:
every message claims its X-Uuid in the push script) against the same services with it off
(``common-config.idempotency-window-seconds: 0``: the plain push script), interleaved round
after round as in ``bench.ingest`` (same client, same 5 KB messages, every X-Uuid new, so
every message is claimed and queued: the usual case). The ratio on/off is the result.

Memory: N claims made by ``ReliableQueue.push_claimed`` itself (items pushed alongside and
then removed), measured two ways: ``MEMORY USAGE`` of one claim's key (what Redis counts
for the key, its value and its entry) and the growth of ``used_memory`` per claim (also
the expiry entry and the hash tables' share). Both for X-Uuid claims and for
Idempotency-Key claims, whose value also carries the message's X-Uuid.

    python -m bench.idempotency            # full run (make bench)
    python -m bench.idempotency --quick    # smoke run (make test)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from bench.common import LOOPBACK, Row, binary, free_port, table, write
from bench.ingest import compare, http_ok, process, service_argv, wait_until, write_configs


def without_check(customer: dict[str, Any], directory: Path) -> tuple[Path, dict[str, Any]]:
    """The same customer config, both front doors on other ports, the check off."""
    changed = copy.deepcopy(customer)
    changed["common-config"] = {**(changed.get("common-config") or {})}
    changed["common-config"]["idempotency-window-seconds"] = 0
    for name in ("receiver", "httpreceiver"):
        for key in ("bind", "prometheus"):
            changed[name][key] = {"inet-interface": LOOPBACK, "inet-port": free_port()}
    path = directory / "customer-check-off.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    return path, changed


def ingest_rows(args: argparse.Namespace, workdir: Path) -> list[Row]:
    from manycore_common.tls import self_signed_pem

    cert_pem, key_pem = self_signed_pem("localhost", ip_addresses=(LOOPBACK,))
    cert = workdir / "receiver_cert.pem"
    cert.write_bytes(cert_pem)
    (workdir / "receiver_key.pem").write_bytes(key_pem)
    redis_port = free_port()
    global_file, on_file, on = write_configs(workdir, redis_port)
    off_file, off = without_check(on, workdir)
    # Redis as the Redis pod runs it: AOF, fsync every second (see bench.ingest).
    redis_argv = [binary("redis-server"), "--port", str(redis_port), "--bind", LOOPBACK,
                  "--dir", str(workdir), "--save", "", "--appendonly", "yes",
                  "--appendfsync", "everysec", "--auto-aof-rewrite-percentage", "0",
                  "--daemonize", "no"]  # fmt: skip
    rows: list[Row] = []
    with (
        process(redis_argv, workdir / "redis.log"),
        process(service_argv("receiver", global_file, on_file), workdir / "rcv-on.log"),
        process(service_argv("receiver", global_file, off_file), workdir / "rcv-off.log"),
        process(service_argv("httpreceiver", global_file, on_file), workdir / "http-on.log"),
        process(service_argv("httpreceiver", global_file, off_file), workdir / "http-off.log"),
    ):
        redis = Redis(host=LOOPBACK, port=redis_port)
        wait_until(redis.ping, 10, "redis-server")
        for settings in (on, off):
            for name in ("receiver", "httpreceiver"):
                metrics = settings[name]["prometheus"]["inet-port"]
                ready = functools.partial(http_ok, f"http://{LOOPBACK}:{metrics}/readyz")
                wait_until(ready, 30, name)
        for kind, name, label in (
            ("smtp", "receiver", "idem-smtp"),
            ("http", "httpreceiver", "idem-http"),
        ):
            subject = (f"{name}, check on", int(on[name]["bind"]["inet-port"]))
            baseline = (f"{name}, check off", int(off[name]["bind"]["inet-port"]))
            rows += compare(kind, label, subject, baseline, args.connections, args.rounds,
                            args.seconds, cert, redis)  # fmt: skip
        redis.close()
    return rows


async def claim_bytes(port: int, count: int, by_key: bool) -> tuple[float, float]:
    """(MEMORY USAGE of one claim, used_memory growth per claim) after ``count`` claims."""
    from redis.asyncio import Redis as AsyncRedis

    from manycore_common.idempotency import DEFAULT_WINDOW_SECONDS, claim_for
    from manycore_common.item import new_item
    from manycore_common.queue import ReliableQueue

    client = AsyncRedis(host=LOOPBACK, port=port)
    await client.flushall()
    queue = ReliableQueue(client, "Q")
    before = int((await client.info("memory"))["used_memory"])
    last = ""
    for start in range(0, count, ReliableQueue.PUSH_CHUNK):
        batch = []
        for n in range(start, min(start + ReliableQueue.PUSH_CHUNK, count)):
            uuid = f"{n:08x}-0b7d-4c3e-8a1f-2d3e4f5a6b7c"  # an RFC 4122 UUID's 36 characters
            key = f"order-{n}" if by_key else None
            claim = claim_for(uuid, 1, DEFAULT_WINDOW_SECONDS, idempotency_key=key, login="apa")
            assert claim is not None
            batch.append((new_item(b"m", source="bench", uuid=uuid), claim))
            last = claim.key
        await queue.push_claimed(batch)
        await client.delete("Q")  # only the claims stay
    after = int((await client.info("memory"))["used_memory"])
    usage = float(await client.memory_usage(last) or 0)
    await client.flushall()
    await client.aclose()
    return usage, (after - before) / count


def memory_rows(args: argparse.Namespace, workdir: Path) -> list[Row]:
    port = free_port()
    argv = [binary("redis-server"), "--port", str(port), "--bind", LOOPBACK, "--dir",
            str(workdir), "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
    rows = []
    with process(argv, workdir / "redis-memory.log"):
        redis = Redis(host=LOOPBACK, port=port)
        wait_until(redis.ping, 10, "redis-server")
        redis.close()
        for by_key, case in ((False, "x-uuid"), (True, "idempotency-key")):
            usage, grown = asyncio.run(claim_bytes(port, args.claims, by_key))
            rows.append(Row("idem-memory", f"{case} {args.claims // 1000}k",
                            "MEMORY USAGE of a claim", usage, "used_memory per claim", grown,
                            usage / grown, unit="B"))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.idempotency")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--seconds", type=float, default=2.5, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", default="1,8,32", help="concurrent connections")
    parser.add_argument("--claims", type=int, default=1_000_000, help="claims for memory")
    args = parser.parse_args()
    args.connections = [int(c) for c in str(args.connections).split(",")]
    if args.quick:
        args.seconds, args.rounds, args.connections, args.claims = 0.5, 1, [8], 2000
    with tempfile.TemporaryDirectory(prefix="bench-idem-") as tmp:
        rows = ingest_rows(args, Path(tmp))
        rows += memory_rows(args, Path(tmp))
    print(
        "Ingest with the idempotency check on (24 h window) vs off (window 0), 5 KB messages, "
        f"medians of {args.rounds} interleaved rounds of {args.seconds:g} s:"
    )
    print(table([r for r in rows if r.benchmark != "idem-memory"]))
    print("Redis bytes per remembered uuid (rate columns in bytes):")
    print(table([r for r in rows if r.benchmark == "idem-memory"]))
    if not args.quick:
        paths = write(
            "idempotency",
            rows,
            "Idempotent submission. idem-smtp / idem-http: msg/s (req/s) of manycore-receiver "
            "(httpreceiver) with common-config.idempotency-window-seconds at its default "
            "(every message claims its X-Uuid in the push script) vs the same with 0 (plain "
            "push), same client and 5 KB messages as bench.ingest, every X-Uuid new; Redis "
            "AOF everysec. idem-memory: MEMORY USAGE of one claim key and used_memory growth "
            f"per claim after {args.claims:,} claims made by ReliableQueue.push_claimed "
            "(x-uuid: value is the priority; idempotency-key: priority and the 36-character "
            f"X-Uuid). Machine: {os.cpu_count()} CPUs shared by Redis, servers and client.",
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
