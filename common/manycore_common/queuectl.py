"""``manycore-queues``: the operator's view of the queues (docs/ARCHITECTURE.md#dead-letters).

    manycore-queues stats                      sizes of every configured queue
    manycore-queues dead QUEUE [--count N]     dead letters, oldest first, with their reasons
    manycore-queues requeue QUEUE [--count N]  move dead letters back (attempts reset)
    manycore-queues adopt                      register processing lists an older version left

It connects with the ``redis`` section's ``reliable-queue.redis`` settings (the Redis pod's),
or another section's with ``--section``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import configscope, redisconn
from .config import (
    DEFAULT_CUSTOMER_CONFIG,
    DEFAULT_GLOBAL_CONFIG,
    Config,
    ConfigError,
    exit_on_config_error,
    load_config,
)
from .queue import ReliableQueue


def queue_names(config: Config) -> list[str]:
    g = config.global_
    return [
        g.reliable_queue.queue_names.primary_queue,
        g.reliable_queue.queue_names.default_queue,
        g.postfix.incoming_queue_name,
        g.backdata.queue_name,
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="manycore-queues", description=__doc__.split("\n")[0])
    parser.add_argument("--global-config-file", default=str(DEFAULT_GLOBAL_CONFIG))
    parser.add_argument("--customer-config-file", default=str(DEFAULT_CUSTOMER_CONFIG))
    parser.add_argument(
        "--section",
        default="redis",
        choices=configscope.SECTIONS,
        help="whose Redis settings to use",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="queue sizes")
    sub.add_parser("adopt", help="register processing lists an older version left (one SCAN)")
    for name, text in (("dead", "list dead letters"), ("requeue", "requeue dead letters")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("queue")
        cmd.add_argument("--count", type=int, default=0, help="how many (0 = all)")
    return parser.parse_args(argv)


def _when(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return "?"


async def run(args: argparse.Namespace, config: Config) -> int:
    section = getattr(config.customer, args.section, None)
    if section is None or not hasattr(section, "reliable_queue"):
        print(f"manycore-queues: no {args.section}.reliable-queue section", file=sys.stderr)
        return 2
    redis = redisconn.connect(section.reliable_queue.redis)
    known = queue_names(config)
    try:
        if args.command == "stats":
            rows = []
            for name in known:
                q = ReliableQueue(redis, name)
                rows.append(
                    {
                        "queue": name,
                        "waiting": await q.size(),
                        "processing": await q.processing_size(),
                        "dead": await q.dead_size(),
                    }
                )
            if args.json:
                print(json.dumps(rows))
            else:
                print(f"{'queue':<24}{'waiting':>10}{'processing':>12}{'dead':>8}")
                for r in rows:
                    print(f"{r['queue']:<24}{r['waiting']:>10}{r['processing']:>12}{r['dead']:>8}")
            return 0
        if args.command == "adopt":
            adopted = {
                name: await ReliableQueue(redis, name).adopt_unregistered() for name in known
            }
            print(json.dumps(adopted) if args.json else f"adopted {adopted}")
            return 0
        if args.queue not in known:
            print(f"manycore-queues: unknown queue {args.queue!r}; known: {known}", file=sys.stderr)
            return 2
        q = ReliableQueue(redis, args.queue)
        if args.command == "requeue":
            moved = await q.requeue_dead(args.count)
            print(json.dumps({"requeued": moved}) if args.json else f"requeued {moved}")
            return 0
        letters = await q.dead_letters(0, args.count or 1000)
        for letter in letters:
            dead = letter.header.get("dead") or {}
            row = {
                "id": letter.id,
                "uuid": letter.uuid,
                "attempts": letter.attempts,
                "died": _when(dead.get("at")),
                "reason": dead.get("reason"),
                "bytes": len(letter.payload),
            }
            print(json.dumps(row) if args.json else " ".join(f"{k}={v}" for k, v in row.items()))
        return 0
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        # Only the chosen section's secrets: the tool runs in that service's pod.
        config = load_config(
            Path(args.global_config_file), Path(args.customer_config_file), args.section
        )
    except ConfigError as exc:
        exit_on_config_error(exc)
    sys.exit(asyncio.run(run(args, config)))
