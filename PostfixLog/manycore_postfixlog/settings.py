"""PostfixLog's settings, derived once from the config before anything starts.

Besides copying the section, this resolves what the section leaves implicit: the legacy
``myhostname`` / ``mailname`` files beside the config (the older Inboxbooster-Mailer read
``/configs/myhostname`` and ``/configs/mailname``), the Postfix time values as seconds, and how
long PostfixLog's state in Redis must live (longer than any message can stay queued).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from manycore_common.config import (
    Config,
    ConfigError,
    PostfixLogSection,
    SuppressionSettings,
    ThrottledTransport,
)
from manycore_common.trace import OFF, TraceSettings

#: postconf(5) time units.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: State outlives the longest a message can stay queued by this much, so the last log
#: lines of a message that expires still find its state.
STATE_TTL_MARGIN_SECONDS = 86400
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
MAIN_CF = "postfixlog.string-replacer.main-cf"
#: Overrides ``postfixlog.queue-on-stop`` for one workload (the KEDA component sets it).
QUEUE_ON_STOP_ENV = "MANYCORE_POSTFIXLOG_QUEUE_ON_STOP"
QUEUE_ON_STOP_MODES = ("hand-back", "keep")


def postfix_time_seconds(value: str) -> int:
    """``5d`` → 432000 (postconf(5) time units; the unit is required here)."""
    match = re.fullmatch(r"([0-9]+)([smhdw])", value)
    if match is None:
        raise ValueError(f"not a Postfix time value with a unit: {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def main_cf_value(value: str | int | bool) -> str:
    """YAML scalars as main.cf writes them (``yes``/``no`` for booleans)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@dataclass(frozen=True)
class Paths:
    """The private instance's directories (docs/ARCHITECTURE.md#postfix: own config, queue and data
    dirs)."""

    base: Path
    logfile: Path

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    @property
    def tools_config_dir(self) -> Path:
        """The same configuration, except that Postfix's commands log to stdout (see
        ``postconf.render_tools_main_cf``)."""
        return self.base / "etc-tools"

    @property
    def queue_dir(self) -> Path:
        return self.base / "queue"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def hand_back_marker(self) -> Path:
        """Present at stop: hand the queue back even with ``queue-on-stop: keep`` (before
        scaling this instance away for good, docs/operations/postfix-queue.md)."""
        return self.base / "hand-back-on-stop"


@dataclass(frozen=True)
class Settings:
    paths: Paths
    myhostname: str
    myorigin: str
    #: main.cf parameters from the config, rendered as text, without myhostname/mailname.
    main_cf: dict[str, str]
    smtpd_port: int
    throttled: ThrottledTransport
    maximal_queue_lifetime: str
    bounce_queue_lifetime: str
    #: How long queue-id state lives in Redis (longer than any message stays queued).
    state_ttl_seconds: int
    instance: str
    max_active_incoming: int
    smtp_connections: int
    deferred_events: bool
    stop_grace_seconds: float
    log_rotate_bytes: int
    #: ``queue-on-stop``: ``hand-back`` or ``keep`` (the queue directory is a volume).
    queue_on_stop: str = "hand-back"
    #: How long a finished message's state stays in Redis (log replays after a restart).
    replay_window_seconds: int = 600
    #: How long a claim on an item lasts (``claim-seconds``, state.CLAIM_SECONDS by default).
    claim_seconds: int = 120
    #: Echo each line of Postfix's log to stdout (``echo-postfix-log``).
    echo_postfix_log: bool = False
    #: ``trace:<uuid>`` records (the global config's ``trace``).
    trace: TraceSettings = OFF
    #: ``common-config.suppression``: which final events also suppress the recipient.
    suppression: SuppressionSettings = field(default_factory=SuppressionSettings)


def _legacy_file(config_dir: Path, name: str) -> str | None:
    path = config_dir / name
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return text or None


def _host_name(value: str | None, key: str, legacy: Path) -> str:
    if value is None:
        raise ConfigError(
            [f"{MAIN_CF}.{key}: field required (or a file {legacy} holding the name)"]
        )
    if not _HOSTNAME_RE.fullmatch(value) or ".." in value:
        raise ConfigError([f"{MAIN_CF}.{key}: {value!r} is not a host name"])
    return value


def build(section: PostfixLogSection, config_dir: Path, hostname: str | None = None) -> Settings:
    """Settings from the section; ``config_dir`` holds the legacy name files."""
    overrides = dict(section.string_replacer.main_cf)
    raw_host = overrides.pop("myhostname", None)
    raw_mailname = overrides.pop("mailname", None)
    myhostname = _host_name(
        main_cf_value(raw_host) if raw_host is not None else _legacy_file(config_dir, "myhostname"),
        "myhostname",
        config_dir / "myhostname",
    )
    mailname = (
        main_cf_value(raw_mailname)
        if raw_mailname is not None
        else _legacy_file(config_dir, "mailname")
    )
    # Debian's /etc/mailname is what its Postfix uses as myorigin; Postfix's own default for
    # myorigin is $myhostname.
    myorigin = _host_name(mailname, "mailname", config_dir / "mailname") if mailname else myhostname
    lifetimes = (section.maximal_queue_lifetime, section.bounce_queue_lifetime)
    longest = max(postfix_time_seconds(v) for v in lifetimes)
    return Settings(
        paths=Paths(base=section.postfix_directory, logfile=section.logfile),
        myhostname=myhostname,
        myorigin=myorigin,
        main_cf={k: main_cf_value(v) for k, v in overrides.items()},
        smtpd_port=section.string_replacer.master_cf.smtpd_port,
        throttled=section.throttled_transport,
        maximal_queue_lifetime=section.maximal_queue_lifetime,
        bounce_queue_lifetime=section.bounce_queue_lifetime,
        state_ttl_seconds=longest + STATE_TTL_MARGIN_SECONDS,
        instance=section.instance_name or hostname or socket.gethostname(),
        max_active_incoming=section.max_active_incoming,
        smtp_connections=section.smtp_connections,
        deferred_events=section.deferred_events,
        stop_grace_seconds=section.stop_grace_seconds,
        log_rotate_bytes=section.log_rotate_bytes,
        queue_on_stop=section.queue_on_stop,
        replay_window_seconds=section.replay_window_seconds,
        claim_seconds=section.claim_seconds,
        echo_postfix_log=section.echo_postfix_log,
    )


def queue_on_stop(configured: str, environ: Mapping[str, str]) -> str:
    """``queue-on-stop``, unless the pod says otherwise in ``QUEUE_ON_STOP_ENV``: one config
    file serves several overlays, and only the workload knows whether an autoscaler may remove
    its pod for good (then the queue must be handed back, docs/operations/postfix-queue.md)."""
    value = environ.get(QUEUE_ON_STOP_ENV)
    if value is None or value == "":
        return configured
    if value not in QUEUE_ON_STOP_MODES:
        raise ConfigError(
            [f"environment {QUEUE_ON_STOP_ENV}: {value!r} is not one of {QUEUE_ON_STOP_MODES}"]
        )
    return value


def from_config(config: Config, environ: Mapping[str, str] | None = None) -> Settings:
    section: PostfixLogSection = config.require("postfixlog")
    built = build(section, config.config_dir)
    env = os.environ if environ is None else environ
    return replace(
        built,
        trace=TraceSettings.of(config.global_.trace),
        suppression=config.customer.common_config.suppression,
        queue_on_stop=queue_on_stop(built.queue_on_stop, env),
    )
