"""BackData: events/s delivered to a local webhook by the real ``manycore-backdata`` process
(taking from a real Redis, POSTing, acking), against a bare aiohttp client loop POSTing the
same batches with the same concurrency to the same webhook (no Redis, no checks): the ratio
is what reliability costs.

The webhook is an aiohttp server in its own process that parses each array and counts the
events; in the "+20ms" cases it also waits 20 ms before answering, like a real endpoint
writing to its database, which is where several posters in flight pay off. Subject and
baseline alternate, round after round, so drift hits both alike.

    python -m bench.backdata            # full run (make bench)
    python -m bench.backdata --quick    # smoke run (make test)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from redis import Redis

from bench.common import Row, free_port, table, write
from manycore_common import events

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 50


def wait_until(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.02)
    raise SystemExit(f"bench.backdata: timed out waiting for {what}")


def http_get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


# ----------------------------------------------------------------- the webhook (own process)


def serve_sink(port: int) -> None:
    """Count the events of every POSTed array; GET /wait?n=N answers once N have arrived."""
    state = {"count": 0}
    arrived = asyncio.Condition()

    async def receive(request: web.Request) -> web.Response:
        batch = json.loads(await request.read())
        latency = int(request.query.get("latency_ms", "0"))
        if latency:
            await asyncio.sleep(latency / 1000)
        async with arrived:
            state["count"] += len(batch)
            arrived.notify_all()
        return web.Response(text="ok")

    async def wait(request: web.Request) -> web.Response:
        wanted = int(request.query["n"])
        async with arrived:
            await arrived.wait_for(lambda: state["count"] >= wanted)
        return web.json_response(state)

    async def reset(_: web.Request) -> web.Response:
        state["count"] = 0
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/events", receive)
    app.router.add_get("/wait", wait)
    app.router.add_get("/reset", reset)
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


# ----------------------------------------------------------------- processes


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_argv(binary: str, port: int, directory: Path) -> list[str]:
    return [binary, "--port", str(port), "--bind", LOOPBACK, "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip


def backdata_argv(
    directory: Path, redis_port: int, url: str, concurrency: int
) -> tuple[list[str], int]:
    metrics_port = free_port()
    customer = {
        "backdata": {
            "post-url": url,
            "batch-size": BATCH_SIZE,
            "concurrency": concurrency,
            "reliable-queue": {"redis": {"hostname": LOOPBACK, "port": redis_port}},
            "prometheus": {"inet-interface": LOOPBACK, "inet-port": metrics_port},
        }
    }
    customer_file = directory / f"customer-{concurrency}.yaml"
    customer_file.write_text(yaml.safe_dump(customer))
    global_file = directory / "global.yaml"
    shutil.copy(ROOT / "inboxbooster-mailer-global.yaml.example", global_file)
    script = Path(sys.executable).with_name("manycore-backdata")
    argv = [str(script), "--global-config-file", str(global_file),
            "--customer-config-file", str(customer_file)]  # fmt: skip
    return argv, metrics_port


# ----------------------------------------------------------------- one round each


def make_events(count: int) -> list[bytes]:
    """Queue items of realistic delivered events (one message, one recipient each)."""
    out = []
    for n in range(count):
        event = events.new_event(
            "delivered",
            uuid=f"bench{n:08d}",
            streamid="spring-sale",
            ip="192.0.2.10",
            rcpt=f"user{n}@example.net",
        )
        out.append(events.encode_event(event, source="postfixlog"))
    return out


def subject_round(redis: Redis, sink: str, items: list[bytes]) -> float:
    """Seconds for BackData to deliver ``items`` once they are queued (pushing included)."""
    http_get(f"{sink}/reset")
    started = time.perf_counter()
    pipe = redis.pipeline(transaction=False)
    for start in range(0, len(items), 500):
        pipe.lpush("EVENT_QUEUE", *items[start : start + 500])
    pipe.execute()
    http_get(f"{sink}/wait?n={len(items)}", timeout=300)
    elapsed = time.perf_counter() - started
    # Let the last acks land before the baseline runs, so the rounds do not overlap.
    wait_until(lambda: redis.llen("EVENT_QUEUE") == 0 and not backlog(redis), 60, "acks")
    return elapsed


def backlog(redis: Redis) -> int:
    return sum(int(redis.llen(k)) for k in redis.keys("{EVENT_QUEUE}:processing:*"))


async def baseline_round(url: str, sink: str, bodies: list[bytes], concurrency: int) -> float:
    """Seconds for a bare client loop to POST ``bodies`` with ``concurrency`` in flight."""
    http_get(f"{sink}/reset")
    pending = iter(bodies)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in pending:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def bodies_of(items: list[bytes]) -> list[bytes]:
    payloads = [raw.split(b"\n", 1)[1] for raw in items]
    return [
        b"[" + b",".join(payloads[i : i + BATCH_SIZE]) + b"]"
        for i in range(0, len(payloads), BATCH_SIZE)
    ]


# ----------------------------------------------------------------- driver


@dataclass(frozen=True)
class Case:
    concurrency: int
    latency_ms: int
    events: int

    @property
    def name(self) -> str:
        return f"c{self.concurrency}" + (f"+{self.latency_ms}ms" if self.latency_ms else "")


def cases(concurrencies: list[int], count: int) -> list[Case]:
    """A fast webhook, then one that takes 20 ms per POST (with fewer events, so a round with
    one poster stays short)."""
    fast = [Case(c, 0, count) for c in concurrencies]
    slow = [Case(c, 20, max(count // 10, 8 * BATCH_SIZE)) for c in concurrencies]
    return fast + slow


def run(plan: list[Case], rounds: int, workdir: Path) -> list[Row]:
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if binary is None:
        raise SystemExit("bench.backdata: redis-server is not installed (make test installs it)")
    redis_port, sink_port = free_port(), free_port()
    sink = f"http://{LOOPBACK}:{sink_port}"
    rows = []
    sink_argv = [sys.executable, "-m", "bench.backdata", "--sink", str(sink_port)]
    with (
        process(redis_argv(binary, redis_port, workdir), workdir / "redis.log"),
        process(sink_argv, workdir / "sink.log"),
    ):
        redis = Redis(host=LOOPBACK, port=redis_port)
        wait_until(redis.ping, 10, "redis-server")
        wait_until(lambda: http_get(f"{sink}/reset"), 10, "the webhook")
        for case in plan:
            redis.flushall()
            items = make_events(case.events)
            bodies = bodies_of(items)
            url = f"{sink}/events?latency_ms={case.latency_ms}"
            argv, metrics = backdata_argv(workdir, redis_port, url, case.concurrency)
            with process(argv, workdir / f"backdata-{case.name}.log"):
                wait_until(
                    lambda m=metrics: http_get(f"http://{LOOPBACK}:{m}/readyz"), 20, "backdata"
                )
                subject_rates, baseline_rates, ratios = [], [], []
                for _ in range(rounds):
                    s = case.events / subject_round(redis, sink, items)
                    b = case.events / asyncio.run(
                        baseline_round(url, sink, bodies, case.concurrency)
                    )
                    subject_rates.append(s)
                    baseline_rates.append(b)
                    ratios.append(s / b)
            rows.append(
                Row(
                    "backdata",
                    case.name,
                    "manycore-backdata",
                    statistics.median(subject_rates),
                    "bare aiohttp POST loop",
                    statistics.median(baseline_rates),
                    statistics.median(ratios),
                    unit="events/s",
                )
            )
        redis.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.backdata")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument("--concurrency", default="1,4", help="posters in flight, per case")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        serve_sink(args.sink)
        return
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    count = 500 if args.quick else args.events
    rounds = 1 if args.quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-backdata-") as tmp:
        rows = run(cases(concurrencies, count), rounds, Path(tmp))
    print(f"BackData, {BATCH_SIZE} events per POST, medians of interleaved rounds:")
    print(table(rows))
    if not args.quick:
        paths = write(
            "backdata",
            rows,
            f"Events/s delivered to a local aiohttp webhook by manycore-backdata (Redis take, "
            f"POST, ack) against a bare aiohttp client POSTing the same {BATCH_SIZE}-event "
            f"batches with the same concurrency (cN: N posters in flight); {count} events per "
            f"round ({max(count // 10, 8 * BATCH_SIZE)} with a webhook taking 20 ms per POST), "
            f"medians of 5 interleaved rounds. Machine: {os.cpu_count()} CPUs shared by Redis, "
            f"the webhook and the sender.",
        )
        print("written:", *paths)


if __name__ == "__main__":
    main()
