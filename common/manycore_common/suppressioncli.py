"""``manycore-suppressions``: the suppression list from a shell (the API's operations, and CSV).

    manycore-suppressions size                                entries per sending domain
    manycore-suppressions get ADDRESS [--domain D]            an address's entries
    manycore-suppressions list --domain D [--reason R]        every live entry of a domain
    manycore-suppressions add ADDRESS --domain D [--reason R] one entry (manual by default)
    manycore-suppressions delete ADDRESS [--domain D]         remove (every domain, or one)
    manycore-suppressions purge [--domain D]                  drop expired entries (daily)
    manycore-suppressions import FILE.csv [--domain D] [--reason R]
        one address per line, optionally ``address,domain[,reason]``; a header line starting
        with ``address`` is skipped; ``-`` reads standard input

It connects with the ``operator`` section's ``reliable-queue.redis`` login (the user
``redis.server.users.operator``) when the customer config has one, else with the ``redis``
section's (with per-service users a read-only user that cannot run the list's scripts), or
another section's with ``--section`` (``httpreceiver`` and ``postfixlog`` manage the list
too); a refusal says which config keys to set (``operatorlogin``). Expiries come from
``common-config.suppression``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from redis.exceptions import RedisError

from . import configscope, keyspace, operatorlogin, redisconn
from . import suppression as s
from .config import (
    DEFAULT_CUSTOMER_CONFIG,
    DEFAULT_GLOBAL_CONFIG,
    Config,
    ConfigError,
    SuppressionSettings,
    exit_on_config_error,
    load_config,
)
from .suppressionstore import Op, SuppressionStore

#: Entries per script call of an import, and calls in flight at once.
CHUNK = 2000
IN_FLIGHT = 4


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="manycore-suppressions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--global-config-file", default=str(DEFAULT_GLOBAL_CONFIG))
    parser.add_argument("--customer-config-file", default=str(DEFAULT_CUSTOMER_CONFIG))
    parser.add_argument("--section", choices=configscope.SECTIONS, help=operatorlogin.SECTION_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("size", help="entries per sending domain (the counter, not a scan)")
    for name in ("get", "delete", "add"):
        cmd = sub.add_parser(name)
        cmd.add_argument("address")
        cmd.add_argument("--domain", required=name == "add")
        if name == "add":
            cmd.add_argument("--reason", default="manual", choices=s.REASONS)
    purge = sub.add_parser("purge", help="remove expired entries (they hold memory)")
    purge.add_argument("--domain")
    listing = sub.add_parser("list")
    listing.add_argument("--domain", required=True)
    listing.add_argument("--reason", choices=s.REASONS)
    importing = sub.add_parser("import")
    importing.add_argument("file")
    importing.add_argument("--domain", help="for lines that name none")
    importing.add_argument("--reason", default="manual", choices=s.REASONS)
    return parser.parse_args(argv)


def csv_ops(
    lines: Iterable[list[str]],
    domain: str | None,
    reason: s.Reason,
    settings: SuppressionSettings,
    now: float,
) -> Iterator[Op]:
    """An Op per CSV row (pure); ValueError naming the line of the first bad one."""
    default = s.normalize_domain(domain) if domain else None
    scopes: dict[str, str] = {}
    entries: dict[str, s.Entry] = {}
    for number, row in enumerate(lines, start=1):
        cells = [c.strip() for c in row]
        if not cells or not cells[0] or (number == 1 and cells[0].lower() == "address"):
            continue
        try:
            address = s.normalize(cells[0])
            raw_domain = cells[1] if len(cells) > 1 and cells[1] else None
            scope = scopes.get(raw_domain or "") if raw_domain else default
            if scope is None and raw_domain:
                scope = scopes.setdefault(raw_domain, s.normalize_domain(raw_domain))
        except s.BadAddress as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if scope is None:
            raise ValueError(f"line {number}: no domain (give one per line or --domain)")
        why = cells[2] if len(cells) > 2 and cells[2] else reason
        if why not in s.REASONS:
            raise ValueError(f"line {number}: reason must be one of {', '.join(s.REASONS)}")
        entry = entries.get(why)
        if entry is None:
            entry = entries[why] = s.new_entry(why, now, settings.expiry_days.days(why))
        yield Op(scope, address, entry)


async def import_file(
    store: SuppressionStore, source: TextIO, args: argparse.Namespace, settings: SuppressionSettings
) -> tuple[int, int]:
    """(rows, new entries): chunks of one scope each, ``IN_FLIGHT`` script calls at once."""
    ops = csv_ops(csv.reader(source), args.domain, args.reason, settings, time.time())
    rows = added = 0
    pending: set[asyncio.Task[int]] = set()
    packed: dict[s.Entry, bytes] = {}
    chunks: dict[str, list[tuple[str, bytes]]] = {}

    async def submit(scope: str, chunk: list[tuple[str, bytes]]) -> None:
        nonlocal added, pending
        pending.add(asyncio.create_task(store.import_entries(scope, chunk)))
        if len(pending) >= IN_FLIGHT:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            added += sum(t.result() for t in done)

    for op in ops:
        rows += 1
        value = packed.get(op.entry)
        if value is None:
            value = packed[op.entry] = s.pack(op.entry)
        chunk = chunks.setdefault(op.scope, [])
        chunk.append((op.address, value))
        if len(chunk) >= CHUNK:
            del chunks[op.scope]
            await submit(op.scope, chunk)
    for scope, chunk in chunks.items():
        await submit(scope, chunk)
    if pending:
        added += sum(await asyncio.gather(*pending))
    return rows, added


async def run(args: argparse.Namespace, config: Config) -> int:
    section = getattr(config.customer, args.section, None)
    if section is None or not hasattr(section, "reliable_queue"):
        print(f"manycore-suppressions: no {args.section}.reliable-queue section", file=sys.stderr)
        return 2
    settings = config.customer.common_config.suppression
    redis = redisconn.connect(section.reliable_queue.redis)
    store = SuppressionStore(redis)
    try:
        return await _command(store, args, settings)
    except (s.BadAddress, ValueError) as exc:
        print(f"manycore-suppressions: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        if not operatorlogin.is_refusal(exc):
            raise
        for line in operatorlogin.refusal_lines("manycore-suppressions", args.section, exc):
            print(line, file=sys.stderr)
        return 1
    finally:
        await redis.aclose()


async def _command(
    store: SuppressionStore, args: argparse.Namespace, settings: SuppressionSettings
) -> int:
    now = time.time()
    if args.command == "size":
        print(json.dumps(await store.scopes(), sort_keys=True))
        return 0
    if args.command == "purge":
        scopes = list(await store.scopes())
        if args.domain:
            domain = s.normalize_domain(args.domain)
            scopes = [x for x in scopes if x.partition("#")[0] == domain]
        removed = {scope: await store.purge(scope, now) for scope in scopes}
        print(json.dumps(removed, sort_keys=True))
        return 0
    if args.command == "import":
        started = time.monotonic()
        rows, added = await import_file(store, args.source, args, settings)
        seconds = round(time.monotonic() - started, 2)
        print(json.dumps({"rows": rows, "added": added, "seconds": seconds}))
        return 0
    if args.command == "list":
        cursor: int | None = 0
        while cursor is not None:
            entries, cursor = await store.page(
                s.normalize_domain(args.domain), cursor, 5000, now, args.reason
            )
            for entry in entries:
                print(json.dumps(entry))
        return 0
    address = s.normalize(args.address)
    if args.command == "add":
        new = s.new_entry(args.reason, now, settings.expiry_days.days(args.reason))
        added = await store.add([Op(s.normalize_domain(args.domain), address, new)])
        print(json.dumps({"added": added}))
        return 0
    scopes = [s.normalize_domain(args.domain)] if args.domain else list(await store.scopes())
    if args.command == "delete":
        print(json.dumps({"deleted": await store.delete([(sc, address) for sc in scopes])}))
        return 0
    entries = await store.get(scopes, address, now)
    for entry in entries:
        print(json.dumps(entry))
    return 0 if entries else 1


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.section is None:
        args.section = operatorlogin.default_section(Path(args.customer_config_file))
    try:
        config = load_config(
            Path(args.global_config_file), Path(args.customer_config_file), args.section
        )
    except ConfigError as exc:
        exit_on_config_error(exc)
    keyspace.use(config.global_.reliable_queue.key_prefix)
    if args.command != "import":
        sys.exit(asyncio.run(run(args, config)))
    if args.file == "-":
        args.source = sys.stdin
        sys.exit(asyncio.run(run(args, config)))
    try:
        with Path(args.file).open(newline="", encoding="utf-8") as args.source:
            sys.exit(asyncio.run(run(args, config)))
    except OSError as exc:
        print(f"manycore-suppressions: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
