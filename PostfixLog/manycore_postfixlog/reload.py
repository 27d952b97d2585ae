"""Config changes applied without a restart (docs/operations/README.md, "Configuration
changes").

The config files are looked at every ``WATCH_SECONDS`` (a Kubernetes ConfigMap volume is
updated in place, about a minute after an apply; never through a subPath, which is never
updated) and at once on SIGHUP. When their content changed they are loaded as at start; if
every changed key is one of ``LIVE_KEYS``, main.cf and master.cf are rendered again and
``postfix reload`` makes master re-read them and restart its daemons (master(8): SIGHUP):
the queue stays, and so do the deliveries in progress. Any other changed key (a directory,
the instance name, a queue name...) refuses the whole change, logged with the keys by name:
PostfixLog's state and Postfix's files hang on them, so only a restart may change them.

``changed_keys``, ``is_live`` and ``plan`` are pure; ``Reloader`` does the IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from manycore_common.config import Config, ConfigError, load_config
from manycore_common.lifecycle import parse_args

from . import settings as settings_module
from .instance import PostfixError, PostfixInstance, run
from .metrics import CONFIG_RELOADS
from .settings import Settings

log = logging.getLogger(__name__)

#: How often the config files are looked at (the kubelet's own delay dominates).
WATCH_SECONDS = 10.0
#: Keys (and everything under them) that can change while Postfix runs.
LIVE_KEYS = tuple(
    f"postfixlog.{key}"
    for key in (
        "string-replacer.main-cf",
        "throttled-transport",
        "max-active-incoming",
        "stop-grace-seconds",
        "log-rotate-bytes",
        "deferred-events",
        "echo-postfix-log",
        "queue-on-stop",
    )
)
GLOBAL_PREFIX = "global:"


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values that differ between two nested dicts (a key added or
    removed counts as changed)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                found.append(path)
            else:
                found += changed_keys(old[key], new[key], path)
        return found
    return [] if old == new else [prefix]


def is_live(key: str) -> bool:
    return any(key == live or key.startswith(live + ".") for live in LIVE_KEYS)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


def config_keys(config: Config) -> dict[str, Any]:
    """The config as nested dicts with the files' key names; global keys prefixed. (Only
    this service's scope was loaded: another service's section never shows up here.)"""
    return {**_dump(config.customer), GLOBAL_PREFIX.rstrip(":"): _dump(config.global_)}


@dataclass(frozen=True)
class Plan:
    keys: tuple[str, ...]
    refused: tuple[str, ...]


def plan(old: Config, new: Config) -> Plan:
    keys = [
        k.replace("global.", GLOBAL_PREFIX, 1)
        for k in changed_keys(config_keys(old), config_keys(new))
    ]
    return Plan(tuple(keys), tuple(k for k in keys if not is_live(k)))


def config_files(argv: Sequence[str] | None = None) -> tuple[Path, Path]:
    """The two files this process was started with (same flags as ``run_service``)."""
    args = parse_args("postfixlog", list(sys.argv[1:] if argv is None else argv))
    return args.global_config_file, args.customer_config_file


def fingerprint(paths: Sequence[Path]) -> tuple[str, ...]:
    """Content hashes (a ConfigMap update swaps a symlink: the content is what counts)."""
    digests = []
    for path in paths:
        try:
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError:
            digests.append("")
    return tuple(digests)


class Reloader:
    """Watches the config files and applies what can change live. ``apply`` hands the new
    settings to the running service (its feeders, processor and stop read them)."""

    def __init__(
        self,
        config: Config,
        files: tuple[Path, Path],
        instance: PostfixInstance,
        apply: Callable[[Settings], None],
    ) -> None:
        self.config = config
        self.files = files
        self.instance = instance
        self.apply = apply
        self.requested = asyncio.Event()
        self._seen = fingerprint(self._watched())

    def _watched(self) -> list[Path]:
        # myhostname / mailname beside the config: legacy sources of two main.cf values.
        legacy = [self.config.config_dir / name for name in ("myhostname", "mailname")]
        return [*self.files, *legacy]

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.requested.wait(), WATCH_SECONDS)
            signalled = self.requested.is_set()
            self.requested.clear()
            seen = fingerprint(self._watched())
            if stop.is_set() or (seen == self._seen and not signalled):
                continue
            self._seen = seen
            await self.reload()

    async def reload(self) -> str:
        """Load, check and apply the files; the outcome is counted and returned."""
        result = await self._reload()
        CONFIG_RELOADS.labels(result).inc()
        return result

    async def _reload(self) -> str:
        try:
            new = load_config(*self.files, "postfixlog")
            new_settings = settings_module.from_config(new)
        except ConfigError as exc:
            log.error(
                "config change is invalid; keeping the running config",
                extra={"problems": exc.problems},
            )
            return "invalid"
        change = plan(self.config, new)
        if change.refused:
            log.error(
                "config change needs a restart; keeping the running config",
                extra={"keys": list(change.refused)},
            )
            return "refused"
        old_settings = self.instance.settings
        if new_settings == old_settings:
            self.config = new
            return "unchanged"
        try:
            await self._render_and_reload(new_settings)
        except (PostfixError, OSError) as exc:
            log.error(
                "config change not taken by postfix; keeping the running config",
                extra={"error": str(exc)},
            )
            with contextlib.suppress(PostfixError, OSError):
                await self._render_and_reload(old_settings)
            return "failed"
        self.config = new
        self.apply(new_settings)
        log.info("config reloaded", extra={"keys": list(change.keys)})
        return "applied"

    async def _render_and_reload(self, new_settings: Settings) -> None:
        """main.cf / master.cf rendered again, checked, and ``postfix reload`` if they
        changed (a Python-side setting alone needs no reload)."""
        before = self.instance.rendered()
        self.instance.settings = new_settings
        self.instance.write_config()
        if self.instance.rendered() == before:
            return
        await self.instance.check()
        config_dir = str(self.instance.paths.config_dir)
        await run([self.instance.bin.postfix, "-c", config_dir, "reload"])
