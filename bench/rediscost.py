"""Redis cost per message of each stage (README, "Scaling"): round trips and commands each
service sends per message, measured on the whole local stack (``make run``'s devstack).

Every Python process of the stack loads ``bench/rediscost_hook/sitecustomize.py``, which counts
what its redis-py clients send (a round trip: one command or one pipeline and its replies; a
command: one EVALSHA however much its script does). The bench sends messages over SMTP
(Receiver) and HTTP (HttpReceiver), a share of them to ``async-bounce@`` recipients, for which
the sink MX answers with a DSN to the tagged return path (MxServer turns it into a bounce
event), waits until the webhook has every event, and divides each service's counts over that
window by what it handled. ``INFO commandstats`` on the stack's Redis gives the commands Redis
executed, scripts' own calls included. The counts include the background work of the window
(heartbeats every 10 s, idle BLMOVE/BLPOP waits), a few per second per service.

    python -m bench.rediscost            # 200 messages (make bench)
    python -m bench.rediscost --quick    # 40 (smoke)
    python -m bench.rediscost --quick --with-e2e  # the test smoke: then bench.e2e --quick,
                                                  # on the same stack (one start for both)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import smtplib
import ssl
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench import e2e
from bench.common import LOOPBACK, RESULTS, ROOT
from bench.e2e import DOMAIN, Stack, body, drive, fail, head
from bench.smtpclient import PASSWORD, USER
from devstack.stack import ports

HOOK = ROOT / "bench" / "rediscost_hook"
SIZE = 5000
#: Every BOUNCE_EVERY-th SMTP message goes to an async-bounce@ recipient.
BOUNCE_EVERY = 5


def send_http(port: int, count: int, tag: str) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for n in range(count):
        uuid, rcpt = f"{tag}h{n}", f"{tag}h{n}@{DOMAIN}"
        data = head(uuid, rcpt) + body(SIZE, 300)
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{port}/v1/mail/send",
            data=data,
            headers={"Content-Type": "message/rfc822", "Authorization": f"Basic {auth}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def send_bounces(port: int, count: int, tag: str) -> None:
    """Messages to ``async-bounce@`` of distinct domains (a hard bounce suppresses its
    address, so each needs one of its own)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the local stack's self-signed certificate
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login(USER, PASSWORD)
        for n in range(count):
            uuid, rcpt = f"{tag}b{n}", f"async-bounce@b{n}.{tag}.example"
            smtp.sendmail("news@example.com", [rcpt], head(uuid, rcpt) + body(SIZE, 300))


def snapshot(directory: Path) -> dict[str, Counter[str]]:
    """Counts per service (summed over its processes)."""
    out: dict[str, Counter[str]] = {}
    for path in directory.glob("manycore-*.json"):
        service = path.name.rsplit("-", 1)[0].removeprefix("manycore-")
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out.setdefault(service, Counter()).update(counts)
    return out


def events_count(stack: Stack) -> Counter[str]:
    if not stack.events.exists():
        return Counter()
    lines = stack.events.read_text().splitlines()
    return Counter(json.loads(line).get("event", "?") for line in lines if line.strip())


def commandstats(stack: Stack) -> dict[str, int]:
    stats = stack.redis().info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def measure(
    workdir: Path, counted: Path, smtp_count: int, http_count: int, bounces: int
) -> dict[str, Any]:
    stack = Stack(workdir).start()
    try:
        return measure_on(stack, counted, smtp_count, http_count, bounces)
    finally:
        stack.stop()


def measure_on(
    stack: Stack, counted: Path, smtp_count: int, http_count: int, bounces: int
) -> dict[str, Any]:
    """The counts over one window on a started stack whose processes load the hook."""
    p = ports(stack.base)
    time.sleep(2)  # past the start-up commands
    before, stats_before = snapshot(counted), commandstats(stack)
    start = time.time()
    asyncio.run(drive(p["smtp"], True, 4, smtp_count, SIZE, "rc", None, 0))
    send_http(p["http"], http_count, "rc")
    send_bounces(p["smtp"], bounces, "rc")
    messages = smtp_count + http_count + bounces
    deadline = time.time() + 300
    while True:
        seen = events_count(stack)
        if seen["delivered"] >= smtp_count + http_count and seen["bounce"] >= bounces:
            break
        if time.time() > deadline:
            raise fail(f"not every event reached the webhook: {dict(seen)}")
        time.sleep(0.2)
    time.sleep(0.5)  # the last counts on disk
    window = time.time() - start
    after, stats_after = snapshot(counted), commandstats(stack)
    executed = sum(stats_after.values()) - sum(stats_before.values())
    return {
        "window_seconds": window,
        "messages": messages,
        "smtp": smtp_count + bounces,
        "http": http_count,
        "events": sum(seen.values()),
        "bounces": bounces,
        "deltas": {s: dict(after[s] - before.get(s, Counter())) for s in after},
        "redis_executed": executed,
        "redis_by_command": {
            k: v - stats_before.get(k, 0)
            for k, v in stats_after.items()
            if v - stats_before.get(k, 0) > 0
        },
    }


#: What each service's counts are divided by, and what that unit is called.
PER = {
    "receiver": ("smtp", "SMTP message"),
    "httpreceiver": ("http", "HTTP message"),
    "transformer": ("messages", "message"),
    "postfixlog": ("messages", "message"),
    "backdata": ("events", "event"),
    "mxserver": ("bounces", "DSN"),
}


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for service, (key, unit) in PER.items():
        counts = result["deltas"].get(service, {})
        n = result[key]
        commands = {k[4:]: v for k, v in counts.items() if k.startswith("cmd:")}
        top = sorted(commands.items(), key=lambda kv: -kv[1])[:5]
        out.append(
            {
                "service": service,
                "per": unit,
                "round_trips": counts.get("round_trips", 0) / n,
                "commands": counts.get("commands", 0) / n,
                "top": ", ".join(f"{k} {v / n:.2f}" for k, v in top),
            }
        )
    return out


def report(result: dict[str, Any]) -> str:
    lines = [
        "| Stage | per | round trips | commands | most sent (per unit) |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows(result):
        lines.append(
            f"| {r['service']} | {r['per']} | {r['round_trips']:.2f} | {r['commands']:.2f} | "
            f"{r['top']} |"
        )
    lines.append("")
    lines.append(
        f"{result['messages']} messages ({result['http']} over HTTP, {result['bounces']} "
        f"bounced by DSN), {result['events']} events, {result['window_seconds']:.1f} s; "
        f"Redis executed {result['redis_executed'] / result['messages']:.1f} commands per "
        "message in all (scripts' own calls included)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 messages (smoke run)")
    parser.add_argument(
        "--with-e2e",
        action="store_true",
        help="then run `bench.e2e --quick` on the same stack (its figures carry the hook's cost)",
    )
    args = parser.parse_args()
    total = 40 if args.quick else 200
    http, bounces = total // 4, total // 10
    smtp = total - http - bounces
    with tempfile.TemporaryDirectory(prefix="rediscost-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # Postfix's queue lives below: devstack wants a 0755 tree
        (workdir / "counts").mkdir()
        os.environ["MANYCORE_REDISCOST_DIR"] = str(workdir / "counts")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(HOOK), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        counts = workdir / "counts"
        if args.with_e2e:
            found: list[dict[str, Any]] = []
            e2e.main(
                ["--quick"],
                on_start=lambda stack: found.append(measure_on(stack, counts, smtp, http, bounces)),
            )
            (result,) = found
        else:
            result = measure(workdir / "stack", counts, smtp, http, bounces)
    text = report(result)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rediscost.json").write_text(json.dumps({"result": result, "rows": rows(result)}))
    (RESULTS / "rediscost.md").write_text("# rediscost\n\n" + text + "\n")


if __name__ == "__main__":
    main()
