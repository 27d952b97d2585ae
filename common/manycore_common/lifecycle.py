"""Process lifecycle shared by every service: argument parsing, config loading, JSON logging
and the two-phase stop (DESIGN §3): the first SIGTERM/SIGINT sets ``stop`` and the service
winds down gracefully; a second one exits at once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from .config import (
    DEFAULT_CUSTOMER_CONFIG,
    DEFAULT_GLOBAL_CONFIG,
    Config,
    ConfigError,
    exit_on_config_error,
    load_config,
)
from .logs import setup_logging

log = logging.getLogger(__name__)

#: Exit code when a second signal cuts the graceful stop short.
FORCED_EXIT_CODE = 1


def parse_args(service: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"manycore-{service}")
    parser.add_argument("--global-config-file", type=Path, default=DEFAULT_GLOBAL_CONFIG)
    parser.add_argument("--customer-config-file", type=Path, default=DEFAULT_CUSTOMER_CONFIG)
    return parser.parse_args(argv)


def load_or_exit(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.global_config_file, args.customer_config_file)
    except ConfigError as exc:
        exit_on_config_error(exc)


def run_service(
    service: str,
    argv: Sequence[str] | None,
    prepare: Callable[[Config], object],
    serve: Callable[[Config, object, asyncio.Event], Awaitable[None]],
) -> None:
    """Parse flags, load and validate config (exit 2 on problems) and ``prepare`` the
    service's settings from it before anything is bound; then run ``serve`` until it returns
    after ``stop`` is set."""
    args = parse_args(service, argv)
    setup_logging(service)
    config = load_or_exit(args)
    try:
        settings = prepare(config)
    except ConfigError as exc:
        exit_on_config_error(exc)
    asyncio.run(_main(service, config, settings, serve))


async def _main(
    service: str,
    config: Config,
    settings: object,
    serve: Callable[[Config, object, asyncio.Event], Awaitable[None]],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("stopping gracefully", extra={"signal": signal.Signals(signum).name})
            stop.set()
        else:
            log.warning("second signal: exiting now", extra={"signal": signal.Signals(signum).name})
            logging.shutdown()
            os._exit(FORCED_EXIT_CODE)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("starting", extra={"pid": os.getpid()})
    await serve(config, settings, stop)
    log.info("stopped")
