"""The ``{{placeholder}}`` templates of the Transformer's config (injected headers, Feedback-ID,
beacon URL): rendering, the placeholders each may use, and the problems found at start.

Pure functions only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z-]+)\s*\}\}")
# What a generated header value may contain: visible ASCII and spaces (RFC 5322 §2.2).
HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")

#: Placeholders an injected header may use. ``unsubscribe-address`` is the recipient's own
#: tagged ``mailto:`` address (``manycore_common.feedbacktag``), different in every copy.
INJECT_PLACEHOLDERS = (
    "uuid",
    "return-path-domain",
    "from-domain",
    "stream-id",
    "unsubscribe-token",
    "unsubscribe-address",
)
FEEDBACK_PLACEHOLDERS = ("campaign", "mail-type", "sender-id", "stream-id", "from-domain")
BEACON_PLACEHOLDERS = ("uuid", "stream-id", "from-domain", "return-path-domain")

#: The unsubscribe address of Inboxbooster-Mailer's configs, which MxServer no longer believes
#: (anyone could write it): ``unsub-{{uuid}}@{{return-path-domain}}``, spaces allowed in braces.
_LEGACY_UNSUBSCRIBE = re.compile(r"unsub-\{\{\s*uuid\s*\}\}@\{\{\s*return-path-domain\s*\}\}")
_UNTAGGED_UNSUBSCRIBE = re.compile(r"unsub-\{\{\s*uuid\s*\}\}@")


class TemplateError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def _compile(template: str) -> tuple[tuple[str, str | None], ...]:
    """(literal, placeholder or None) pieces; templates are few, messages many."""
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append((template[position : match.start()], match.group(1)))
        position = match.end()
    pieces.append((template[position:], None))
    return tuple(pieces)


def render(template: str, values: Mapping[str, str]) -> str:
    """``{{name}}`` (spaces allowed inside the braces) replaced by ``values[name]``."""
    out = []
    for literal, name in _compile(template):
        out.append(literal)
        if name is not None:
            if name not in values:
                raise TemplateError(f"unknown placeholder {{{{{name}}}}} in {template!r}")
            out.append(values[name])
    return "".join(out)


def uses(template: str, name: str) -> bool:
    return any(placeholder == name for _, placeholder in _compile(template))


def upgrade_legacy(template: str) -> str:
    """``template`` with the old untagged unsubscribe address replaced by
    ``{{unsubscribe-address}}``, so that configs written for Inboxbooster-Mailer keep an
    unsubscribe link that MxServer believes. Unchanged when there is none."""
    return _LEGACY_UNSUBSCRIBE.sub("{{unsubscribe-address}}", template)


def untagged_unsubscribe(template: str) -> bool:
    """Whether ``template`` still has an untagged ``unsub-{{uuid}}@`` address."""
    return _UNTAGGED_UNSUBSCRIBE.search(template) is not None


def problems(
    checks: list[tuple[str, str, tuple[str, ...]]], has_unsubscribe_secret: bool
) -> list[str]:
    """Problems with (where, template, allowed placeholders), found at start rather than per
    message: unknown placeholders, a token without its secret, values that are no header."""
    found = []
    for where, template, allowed in checks:
        if uses(template, "unsubscribe-token") and not has_unsubscribe_secret:
            found.append(
                f"transformer.{where}: {{{{unsubscribe-token}}}} needs "
                "common-config.unsubscribe-secret"
            )
            continue
        try:
            rendered = render(template, dict.fromkeys(allowed, "x"))
        except TemplateError as exc:
            found.append(f"transformer.{where}: {exc}")
            continue
        if not HEADER_VALUE.fullmatch(rendered):
            found.append(f"transformer.{where}: must be printable ASCII on one line")
    return found
