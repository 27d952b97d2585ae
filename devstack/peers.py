"""The stand-ins for the outside world, in one process: the sink MX (every mailbox
provider) and the webhook inbox (the customer's endpoint).

    python -m devstack.peers --workdir DIR --sink-port N --webhook-port N \\
        --mx-port N --http-port N --dkim-records FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from aiohttp import web

from manycore_common.logs import setup_logging

from . import sink as sink_module
from . import webhook


async def main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    records = args.records
    sink = sink_module.Sink(
        directory=args.workdir / "sink",
        mx_port=args.mx_port,
        http_port=args.http_port,
        dkim_records=records,
    )
    app = webhook.make_app(args.workdir / "webhook", args.secret, args.workdir / "sink")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.webhook_port).start()
    try:
        await sink_module.serve(sink, args.sink_port, stop)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="devstack.peers")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--webhook-port", type=int, required=True)
    parser.add_argument("--mx-port", type=int, required=True)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--dkim-records")
    parser.add_argument("--webhook-secret-file", help="check BackData's signatures with it")
    args = parser.parse_args()
    args.secret = (
        Path(args.webhook_secret_file).read_text().strip().encode()
        if args.webhook_secret_file
        else None
    )
    args.records = json.loads(Path(args.dkim_records).read_text()) if args.dkim_records else {}
    setup_logging("devstack-peers")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
