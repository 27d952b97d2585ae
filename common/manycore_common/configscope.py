"""Which parts of the customer file each service loads: least privilege for secrets.

A service reads the secret files (``X-file``) of its own section and of the
``common-config`` keys it uses, and no others: MxServer, which strangers on the Internet
talk to, never holds the submission passwords or the webhook secret. A section it only
borrows a few plain values from (MxServer reads the return-path domains of
``transformer.domain-settings``) is validated with its secret files left unread, and every
other section is not loaded at all, so a missing secret file of another service is not an
error.

``scoped_customer`` is pure: it takes the parsed YAML and gives back what to validate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The customer file's sections, one per service.
SECTIONS = (
    "receiver",
    "httpreceiver",
    "transformer",
    "postfixlog",
    "mxserver",
    "backdata",
    "redis",
    "operator",
)

#: common-config keys that are, or hold, secrets. Every other common-config key (none
#: today) is plain and loaded by every service.
COMMON_SECRET_KEYS = (
    "unsubscribe-secret",
    "feedback-secret",
    "feedback-secret-previous",
    "object-storage",
)


@dataclass(frozen=True)
class Scope:
    """What one service loads: its own section (secret files read), sections it borrows
    plain values from (secret files not read), and the common-config secrets it uses."""

    own: str | None
    borrowed: tuple[str, ...] = ()
    common: tuple[str, ...] = ()


#: One entry per service, kept in sync with the code by tests/unit/test_configscope.py
#: (every ``common_config.<key>`` and ``customer.<section>`` a service's code reads).
SCOPES: Mapping[str, Scope] = {
    "receiver": Scope("receiver"),
    # Checks the one-click unsubscribe tokens the Transformer mints; serves the suppression
    # list's API (``suppression`` is plain: listed so the table says who uses it).
    "httpreceiver": Scope("httpreceiver", common=("unsubscribe-secret", "suppression")),
    # Mints unsubscribe tokens and signs the feedback addresses; checks the suppression list.
    "transformer": Scope(
        "transformer",
        common=("unsubscribe-secret", "feedback-secret", "feedback-secret-previous", "suppression"),
    ),
    # Suppresses the recipients of hard bounces with their events.
    "postfixlog": Scope("postfixlog", common=("suppression",)),
    # Verifies the feedback addresses; receives for the return-path domains of the
    # Transformer's domain-settings and knows its own Postfix's HELO name.
    "mxserver": Scope(
        "mxserver",
        borrowed=("transformer", "postfixlog"),
        common=("feedback-secret", "feedback-secret-previous", "suppression"),
    ),
    "backdata": Scope("backdata"),
    # Backs its data up to object storage.
    "redis": Scope("redis", common=("object-storage",)),
    # The operator tools' own login (``manycore-queues``, ``manycore-suppressions`` with
    # ``--section operator``): its password file only; ``suppression`` is plain.
    "operator": Scope("operator", common=("suppression",)),
    # The operator's tool that prints DNS records: plain values only (the DKIM keys it
    # reads are paths the Transformer's section names, not loader secrets).
    "dns": Scope(None, borrowed=("transformer", "mxserver", "postfixlog")),
}


def scope_for(service: str) -> Scope:
    try:
        return SCOPES[service]
    except KeyError:
        raise ValueError(f"no config scope for {service!r}; known: {sorted(SCOPES)}") from None


def scoped_customer(data: Mapping[str, Any], scope: Scope) -> tuple[dict[str, Any], set[str]]:
    """The customer file as the service loads it, and the names of the borrowed sections
    present (validated without reading their secret files).

    Sections outside the scope become absent; common-config keeps its plain keys and the
    secrets of the scope (with their ``-file`` forms). Unknown top-level keys are kept, so
    they are still reported."""
    kept: dict[str, Any] = {}
    borrowed: set[str] = set()
    for name, value in data.items():
        if name == "common-config":
            kept[name] = _common(value, scope.common)
        elif name not in SECTIONS or name == scope.own:
            kept[name] = value
        elif name in scope.borrowed:
            kept[name] = value
            borrowed.add(name)
    return kept, borrowed


def _common(value: Any, wanted: tuple[str, ...]) -> Any:
    if not isinstance(value, Mapping):
        return value  # null or a wrong type: validation reports it
    dropped = {
        key
        for secret in COMMON_SECRET_KEYS
        if secret not in wanted
        for key in (secret, f"{secret}-file")
    }
    return {k: v for k, v in value.items() if k not in dropped}
