"""How the operator tools (``manycore-queues``, ``manycore-suppressions``) log in to Redis,
and what they say when Redis refuses them.

With one ACL user per service (Redis/README.md, "ACL users") the Redis pod's own login is
the read-only exporter, and each service's user touches only its own keys; the tools'
writes (dead letters of every queue, the suppression list) need ``redis.server.users.operator``.
Its login is the customer file's ``operator`` section (``operator.reliable-queue.redis``), a
section of its own so that a tool run with it reads that one password file, not the Redis
pod's admin and S3 secrets (``configscope``). The tools default to it when the file has
that section, else to the ``redis`` section, as before there was an operator user.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

OPERATOR_SECTION = "operator"
FALLBACK_SECTION = "redis"
USER_KEY = "redis.server.users.operator"
LOGIN_KEY = "operator.reliable-queue.redis"
SECTION_HELP = (
    "whose Redis login to use (default: operator when the customer config has an operator "
    "section, else redis)"
)


def default_section(customer_file: Path) -> str:
    """``operator`` when the customer file has that section, else ``redis``. An unreadable
    file gives ``redis``: loading the config then reports what is wrong with it."""
    try:
        data = yaml.safe_load(customer_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return FALLBACK_SECTION
    if isinstance(data, dict) and data.get(OPERATOR_SECTION) is not None:
        return OPERATOR_SECTION
    return FALLBACK_SECTION


def is_refusal(exc: RedisError) -> bool:
    """A refused command or login: NOPERM (also from inside a script), WRONGPASS."""
    if isinstance(exc, NoPermissionError | AuthenticationError):
        return True
    text = str(exc)
    return "NOPERM" in text or "WRONGPASS" in text or "no permissions" in text


def refusal_lines(tool: str, section: str, exc: RedisError) -> list[str]:
    """What to tell the operator (pure): what was refused, and which user and config key
    to use instead."""
    what = "the login" if isinstance(exc, AuthenticationError) else "a command"
    first = f"{tool}: Redis refused {what} of the {section} section's user: {exc}"
    if section != OPERATOR_SECTION:
        return [
            first,
            f"{tool}: this needs the operator user: set {USER_KEY} (restart manycore-redis "
            f"to create it) and {LOGIN_KEY} with its username and password-file, then run "
            "with --section operator (the default once the operator section exists)",
        ]
    return [
        first,
        f"{tool}: check that {LOGIN_KEY} names the user and password of {USER_KEY}, and "
        "that manycore-redis was restarted after it was added (it writes the ACL at start)",
    ]
