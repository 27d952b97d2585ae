"""``manycore-queues``: the operator's view of the queues (docs/ARCHITECTURE.md#dead-letters).

    manycore-queues stats                      sizes of every configured queue
    manycore-queues dead QUEUE [--count N]     dead letters, oldest first, with their reasons
    manycore-queues requeue QUEUE [--count N]  move dead letters back (attempts reset)
    manycore-queues peek ID [--raw]            one dead letter, header and payload
    manycore-queues drop ID                    delete one dead letter
    manycore-queues requeue ID                 move one dead letter back (attempts reset)
    manycore-queues trace UUID                 what happened to a message, and where it is now
    manycore-queues unclassified [--untagged] [--count N] [--show N]
                                               MxServer's unclassified mail: the tagged
                                               list, or the untagged one (postmaster@, abuse)
    manycore-queues adopt                      register processing lists an older version left

Look-ups by id or uuid read each list in pages and stop after ``--scan-cap`` items per list
(and say so); see docs/operations/tracing.md.

It connects with the ``operator`` section's ``reliable-queue.redis`` login (the user
``redis.server.users.operator``) when the customer config has one, else with the ``redis``
section's (the Redis pod's: with per-service users the read-only exporter, enough for stats,
dead, peek, trace, unclassified); another section's with ``--section``. drop and requeue
need the operator user (or, for requeue QUEUE, the consuming service's section); a refusal
says which config keys to set (``operatorlogin``).
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

from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import configscope, keyspace, operatorlogin, queueinspect, queueview, redisconn, trace
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
    parser.add_argument("--section", choices=configscope.SECTIONS, help=operatorlogin.SECTION_HELP)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="queue sizes")
    sub.add_parser("adopt", help="register processing lists an older version left (one SCAN)")
    cmd = sub.add_parser("dead", help="list dead letters")
    cmd.add_argument("queue")
    cmd.add_argument("--count", type=int, default=0, help="how many (0 = all)")
    cmd = sub.add_parser("requeue", help="requeue dead letters: a queue's, or one by item id")
    cmd.add_argument("queue", metavar="QUEUE|ID")
    cmd.add_argument("--count", type=int, default=0, help="how many (0 = all; QUEUE only)")
    for name, text in (("peek", "show one dead letter"), ("drop", "delete one dead letter")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("id")
    sub.choices["peek"].add_argument("--raw", action="store_true", help="payload bytes only")
    cmd = sub.add_parser("trace", help="what happened to one X-Uuid")
    cmd.add_argument("uuid")
    cmd = sub.add_parser("unclassified", help="MxServer's unclassified mail, newest first")
    cmd.add_argument("--count", type=int, default=20, help="how many to list")
    cmd.add_argument("--show", type=int, default=None, help="print message N (0 = newest)")
    cmd.add_argument("--raw", action="store_true", help="with --show: the message bytes only")
    cmd.add_argument(
        "--untagged",
        action="store_true",
        help="the untagged list (postmaster@ and abuse mail no verified tag ties to our mail)",
    )
    for cmd in sub.choices.values():
        cmd.add_argument(
            "--scan-cap",
            type=int,
            default=queueinspect.SCAN_CAP,
            help="most items read per list by a look-up",
        )
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
    try:
        return await dispatch(args, redis, queue_names(config))
    except RedisError as exc:
        if not operatorlogin.is_refusal(exc):
            raise
        for line in operatorlogin.refusal_lines("manycore-queues", args.section, exc):
            print(line, file=sys.stderr)
        return 1
    finally:
        await redis.aclose()


async def dispatch(args: argparse.Namespace, redis: Redis, known: list[str]) -> int:
    queues = [ReliableQueue(redis, name) for name in known]
    if args.command == "stats":
        return await stats(args, queues)
    if args.command == "adopt":
        adopted = {q.name: await q.adopt_unregistered() for q in queues}
        print(json.dumps(adopted) if args.json else f"adopted {adopted}")
        return 0
    if args.command == "trace":
        return await trace_uuid(args, redis, queues)
    if args.command == "unclassified":
        return await unclassified(args, redis)
    if args.command in ("peek", "drop") or (args.command == "requeue" and args.queue not in known):
        return await one_dead_letter(args, redis, queues)
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
            "id": queueinspect.letter_id(letter),
            "uuid": letter.uuid,
            "attempts": letter.attempts,
            "died": _when(dead.get("at")),
            "reason": dead.get("reason"),
            "bytes": len(letter.payload),
        }
        print(json.dumps(row) if args.json else " ".join(f"{k}={v}" for k, v in row.items()))
    return 0


async def stats(args: argparse.Namespace, queues: list[ReliableQueue]) -> int:
    rows = []
    for q in queues:
        rows.append(
            {
                "queue": q.name,
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


async def one_dead_letter(
    args: argparse.Namespace, redis: Redis, queues: list[ReliableQueue]
) -> int:
    """peek / drop / requeue one dead letter by its item id (first queue that has it)."""
    wanted = args.id if args.command != "requeue" else args.queue
    queue, item, scans = await queueinspect.find_dead(redis, queues, wanted, args.scan_cap)
    if queue is None or item is None:
        read = ", ".join(f"{s.key}: {s.read}{' (capped)' if s.capped else ''}" for s in scans)
        print(f"manycore-queues: no dead letter with id {wanted!r} (read {read})", file=sys.stderr)
        if args.command == "requeue":
            known = [q.name for q in queues]
            print(f"manycore-queues: (nor a queue; known: {known})", file=sys.stderr)
        return 1
    if args.command == "peek":
        if args.raw:
            sys.stdout.buffer.write(item.payload)
        elif args.json:
            print(json.dumps({"queue": queue.name, **queueinspect.summary(item)}))
        else:
            print("\n".join(queueview.item_lines(item, f"{queue.dead_key}")))
        return 0
    done = await queueinspect.take_dead(redis, queue, item, args.command == "requeue")
    verb = "requeued" if args.command == "requeue" else "dropped"
    if not done:
        print(f"manycore-queues: {wanted} was moved meanwhile; nothing done", file=sys.stderr)
        return 1
    row = {verb: wanted, "queue": queue.name}
    print(json.dumps(row) if args.json else f"{verb} {wanted} ({queue.name})")
    return 0


async def trace_uuid(args: argparse.Namespace, redis: Redis, queues: list[ReliableQueue]) -> int:
    records = await trace.read(redis, args.uuid)
    rows = await queueinspect.locate(redis, queues, args.uuid, args.scan_cap)
    if args.json:
        print(json.dumps({"uuid": args.uuid, "records": records, "now": rows}))
    else:
        print("\n".join(queueview.trace_lines(args.uuid, records, rows)))
    return 0


async def unclassified(args: argparse.Namespace, redis: Redis) -> int:
    ks = keyspace.current()
    key, other = (ks.unclassified(), ks.unclassified_untagged())
    if args.untagged:
        key, other = other, key
    if args.show is not None:
        raw = await redis.lindex(key, args.show)
        if raw is None:
            print(
                f"manycore-queues: no unclassified message #{args.show} in {key}", file=sys.stderr
            )
            return 1
        item = queueinspect.decode(raw)
        if args.raw:
            sys.stdout.buffer.write(item.payload)
        else:
            print("\n".join(queueview.item_lines(item, f"{key} #{args.show}")))
        return 0
    total, other_total = int(await redis.llen(key)), int(await redis.llen(other))
    raws = await redis.lrange(key, 0, max(args.count, 1) - 1)
    rows = [queueview.unclassified_row(i, queueinspect.decode(r)) for i, r in enumerate(raws)]
    if args.json:
        which = "untagged" if args.untagged else "tagged"
        counts = {"list": which, "key": key, "total": total, "other_total": other_total}
        print(json.dumps(counts | {"messages": rows}))
        return 0
    print(queueview.unclassified_heading(key, total, args.untagged, other, other_total))
    for row in rows:
        print(queueview.unclassified_line(row))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.section is None:
        args.section = operatorlogin.default_section(Path(args.customer_config_file))
    try:
        # Only the chosen section's secrets: the tool runs in that service's pod.
        config = load_config(
            Path(args.global_config_file), Path(args.customer_config_file), args.section
        )
    except ConfigError as exc:
        exit_on_config_error(exc)
    keyspace.use(config.global_.reliable_queue.key_prefix)
    sys.exit(asyncio.run(run(args, config)))
