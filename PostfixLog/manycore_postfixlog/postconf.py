"""main.cf and master.cf of the private Postfix, rendered from the templates beside this
module and the settings. Pure functions: text in, text out.

The template's ``{{name}}`` placeholders are filled first; then every main.cf parameter from
``postfixlog.string-replacer.main-cf`` replaces the template's line of the same name, or is
appended. Replacing rather than appending keeps one definition per parameter, which is what
an operator reading ``postconf -n`` expects (postconf(5): the last definition would win).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.resources import files

from .settings import Settings

#: The transport that throttled destination domains use (a copy of smtp with its own limits).
THROTTLED_TRANSPORT = "throttled"
TRANSPORT_MAP_FILE = "throttled_domains"
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def template(name: str) -> str:
    return files("manycore_postfixlog").joinpath("templates", name).read_text(encoding="utf-8")


def fill(text: str, values: Mapping[str, str]) -> str:
    """``{{name}}`` replaced by ``values[name]``; a placeholder without a value is a bug."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return _PLACEHOLDER.sub(one, text)


def set_parameters(text: str, parameters: Mapping[str, str], heading: str) -> str:
    """main.cf ``text`` with each parameter's line replaced (continuation lines included),
    or appended under ``heading`` when the text does not define it."""
    lines = text.splitlines()
    out: list[str] = []
    done: set[str] = set()
    skipping = False
    for line in lines:
        if skipping and line[:1] in (" ", "\t") and line.strip():
            continue  # a continuation line of a replaced parameter (postconf(5) syntax)
        skipping = False
        name = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else ""
        if name in parameters:
            out.append(f"{name} = {parameters[name]}")
            done.add(name)
            skipping = True
            continue
        out.append(line)
    rest = [f"{k} = {v}" for k, v in parameters.items() if k not in done]
    if rest:
        out += ["", heading, *rest]
    return "\n".join(out) + "\n"


def throttle_parameters(settings: Settings, transport_map: str) -> dict[str, str]:
    """main.cf parameters of the throttled transport (postconf(5) ``transport_destination_*``),
    with ``transport_maps`` looking up the throttled domains first."""
    throttled = settings.throttled
    if not throttled.domains:
        return {}
    maps = f"texthash:{transport_map}"
    if settings.main_cf.get("transport_maps"):
        maps += f", {settings.main_cf['transport_maps']}"
    name = THROTTLED_TRANSPORT
    return {
        "transport_maps": maps,
        f"{name}_destination_concurrency_limit": str(throttled.concurrency_limit),
        f"{name}_destination_rate_delay": throttled.rate_delay,
        # postconf(5) default_destination_rate_delay: with a rate delay, allow 10 failed
        # connections before a destination counts as dead, not just one.
        f"{name}_destination_concurrency_failed_cohort_limit": "10",
    }


def transport_map(settings: Settings) -> str:
    """The texthash transport(5) table: each throttled domain → the throttled transport
    (empty next hop: the domain's MX, or relayhost when one is set)."""
    lines = [f"{domain} {THROTTLED_TRANSPORT}:" for domain in settings.throttled.domains]
    return "\n".join(lines) + ("\n" if lines else "")


def render_main_cf(settings: Settings) -> str:
    paths = settings.paths
    text = fill(
        template("main.cf"),
        {
            "queue_directory": str(paths.queue_dir),
            "data_directory": str(paths.data_dir),
            "maillog_file": str(paths.logfile),
            # postconf(5) maillog_file_prefixes: the log file must sit under one of them.
            "maillog_file_prefixes": str(paths.logfile.parent),
            "myhostname": settings.myhostname,
            "myorigin": settings.myorigin,
            "maximal_queue_lifetime": settings.maximal_queue_lifetime,
            "bounce_queue_lifetime": settings.bounce_queue_lifetime,
        },
    )
    parameters = dict(settings.main_cf)
    parameters.update(throttle_parameters(settings, str(paths.config_dir / TRANSPORT_MAP_FILE)))
    return set_parameters(text, parameters, "# From postfixlog.string-replacer.main-cf")


def render_tools_main_cf(settings: Settings) -> str:
    """main.cf for postsuper(1): identical but logging to stdout. While master is down,
    postsuper writes to maillog_file itself, as mail_owner (postlogd(8) BUGS), which fails
    when the file is root's or its directory out of that user's reach; its output is
    PostfixLog's to log anyway. While master runs, postsuper logs through postlogd."""
    return set_parameters(
        render_main_cf(settings),
        {"maillog_file": "/dev/stdout", "maillog_file_prefixes": "/dev/stdout"},
        "",
    )


def render_master_cf(settings: Settings) -> str:
    text = fill(template("master.cf"), {"smtpd_port": str(settings.smtpd_port)})
    if settings.throttled.domains:
        text += (
            "# Throttled destinations (postfixlog.throttled-transport): smtp with its own limits.\n"
            f"{THROTTLED_TRANSPORT} unix  -       -       n       -       -       smtp\n"
            f"  -o syslog_name=postfix/{THROTTLED_TRANSPORT}\n"
        )
    return text
