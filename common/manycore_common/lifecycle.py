"""Process lifecycle shared by every service: argument parsing, config loading, JSON logging and the
two-phase stop (docs/ARCHITECTURE.md#runtime-contract): the first SIGTERM/SIGINT sets ``stop`` and
the service winds down gracefully; a second one exits at once. A front door with ``workers`` above 1
becomes the parent of its workers here (see workers)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from . import keyspace, workers
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
#: What a parent of workers does before a forced exit: kill them (supervisor.Supervisor.kill).
_forced_exit_hooks: list[Callable[[], None]] = []

#: What ``prepare`` made of the config, handed to ``serve`` with its type.
P = TypeVar("P")
Serve = Callable[[Config, P, asyncio.Event], Awaitable[None]]


def parse_args(service: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"manycore-{service}")
    parser.add_argument("--global-config-file", type=Path, default=DEFAULT_GLOBAL_CONFIG)
    parser.add_argument("--customer-config-file", type=Path, default=DEFAULT_CUSTOMER_CONFIG)
    return parser.parse_args(argv)


def load_or_exit(args: argparse.Namespace, service: str) -> Config:
    """The config as ``service`` sees it: its own section and secrets only (configscope)."""
    try:
        return load_config(args.global_config_file, args.customer_config_file, service)
    except ConfigError as exc:
        exit_on_config_error(exc)


def run_service(
    service: str,
    argv: Sequence[str] | None,
    prepare: Callable[[Config], P],
    serve: Serve[P],
    *,
    front_door: Callable[[P], workers.FrontDoor] | None = None,
    stop_timeout: float = 35.0,
) -> None:
    """Parse flags, load and validate config (exit 2 on problems) and ``prepare`` the
    service's settings from it before anything is bound; then run ``serve`` until it returns
    after ``stop`` is set.

    ``front_door`` gives the section of a service that can run workers: with ``workers``
    above 1 this process becomes their parent instead of serving itself, and waits up to
    ``stop_timeout`` for their graceful stop."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(service, arguments)
    handoff = workers.handoff()
    setup_logging(service, worker=handoff.index if handoff else None)
    config = load_or_exit(args, service)
    keyspace.use(config.global_.reliable_queue.key_prefix)
    try:
        settings = prepare(config)
    except ConfigError as exc:
        exit_on_config_error(exc)
    if handoff is None and front_door is not None and front_door(settings).workers > 1:
        serve = functools.partial(
            _parent, front_door(settings), f"manycore_{service}", arguments, stop_timeout
        )
    asyncio.run(_main(service, config, settings, serve, handoff))


async def _parent(
    section: workers.FrontDoor,
    module: str,
    argv: list[str],
    stop_timeout: float,
    config: Config,
    settings: object,
    stop: asyncio.Event,
) -> None:
    await workers.run_parent(
        section,
        module,
        argv,
        stop,
        stop_timeout=stop_timeout,
        on_forced_exit=_forced_exit_hooks.append,
    )


async def _main(
    service: str,
    config: Config,
    settings: P,
    serve: Serve[P],
    handoff: workers.Handoff | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        if handoff is not None:
            # A worker may get SIGTERM twice: from its parent and from whoever signalled the
            # whole group (systemd, kill -- -PGID). Only the parent forces an exit (SIGKILL).
            # Ignored for good, not just by this handler: asyncio puts back the default
            # action (die) when the loop closes, and a late second SIGTERM would find it.
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        received += 1
        if received == 1:
            log.info("stopping gracefully", extra={"signal": signal.Signals(signum).name})
            stop.set()
        else:
            log.warning("second signal: exiting now", extra={"signal": signal.Signals(signum).name})
            for hook in _forced_exit_hooks:
                hook()
            logging.shutdown()
            os._exit(FORCED_EXIT_CODE)

    loop.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    if handoff is None:
        loop.add_signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
    else:
        # Ctrl-C reaches the whole process group; the parent decides and passes SIGTERM on.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        workers.watch_parent(handoff.parent_fd, stop.set)
    log.info("starting", extra={"pid": os.getpid()})
    await serve(config, settings, stop)
    log.info("stopped")
