"""The stand-ins for the outside world: the sink MX (every mailbox provider) and the webhook
inbox (the customer's endpoint). One process serves whichever ports it is given, so `make run`
runs them as two processes that fail independently, as the Internet and the customer's
endpoint would: the fault tests take the inbox down while the sink keeps receiving, and make
the sink hang while the inbox keeps taking events.

    python -m devstack.peers --workdir DIR --sink-port N --mx-port N --http-port N \\
        --dkim-records FILE
    python -m devstack.peers --workdir DIR --webhook-port N
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
    runner: web.AppRunner | None = None
    if args.webhook_port is not None:
        app = webhook.make_app(args.workdir / "webhook", args.secret, args.workdir / "sink")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.webhook_port).start()
    try:
        if args.sink_port is None:
            await stop.wait()
        else:
            sink = sink_module.Sink(
                directory=args.workdir / "sink",
                mx_port=args.mx_port,
                http_port=args.http_port,
                dkim_records=args.records,
            )
            await sink_module.serve(sink, args.sink_port, stop)
    finally:
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="devstack.peers")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sink-port", type=int, help="serve the sink MX on this port")
    parser.add_argument("--webhook-port", type=int, help="serve the webhook inbox on this port")
    parser.add_argument("--mx-port", type=int, help="MxServer, where the sink sends follow-ups")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--dkim-records")
    parser.add_argument("--webhook-secret-file", help="check BackData's signatures with it")
    args = parser.parse_args()
    if args.sink_port is None and args.webhook_port is None:
        parser.error("give --sink-port, --webhook-port or both")
    if args.sink_port is not None and args.mx_port is None:
        parser.error("the sink MX needs --mx-port")
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
