"""Bounces that are not RFC 3464 reports: the plain-text formats real MTAs still send
(qmail, Exim, Microsoft Exchange, Yahoo, GroupWise, and generic "delivery failed" texts).

Rules are data: each format has a signature and a pattern that yields (address, reason)
blocks. When no format matches, a generic rule takes the addresses that follow a failure
phrase. Whether a failure is permanent comes from a status code in its reason when there is
one, otherwise from the wording of the whole text: delay notices ("will retry", "has been
delayed") are temporary and never hard.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from manycore_common.bounce_rules import enhanced_status, is_permanent

from .reports import Failure

_FLAGS = re.IGNORECASE | re.MULTILINE
ADDRESS = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"


@dataclass(frozen=True)
class TextFormat:
    name: str
    signature: re.Pattern[str]
    #: Yields groups "address" and (optionally) "reason".
    blocks: re.Pattern[str]
    #: Set when the format itself says the failure is temporary or permanent.
    temporary: bool | None = None


def _fmt(name: str, signature: str, blocks: str, temporary: bool | None = None) -> TextFormat:
    return TextFormat(
        name, re.compile(signature, _FLAGS), re.compile(blocks, _FLAGS | re.DOTALL), temporary
    )


FORMATS: tuple[TextFormat, ...] = (
    # qmail-send: "<user@host>:" then the reason, blocks separated by blank lines.
    _fmt(
        "qmail",
        r"this is the qmail-send program|I'm afraid I wasn't able to deliver",
        rf"^<(?P<address>{ADDRESS})>:\s*\n(?P<reason>.*?)(?=\n\s*\n|\n---|\Z)",
    ),
    # Exim delay warning: addresses "deferred", delivery attempts continue.
    _fmt(
        "exim-delay",
        r"has not yet been delivered to one or more of its\s+recipients",
        rf"^ {{2}}(?P<address>{ADDRESS})\s*\n(?P<reason>(?: {{3,}}.*\n?)*)",
        temporary=True,
    ),
    # Exim: "The following address(es) failed:", address indented two spaces, reason deeper.
    _fmt(
        "exim",
        r"could not be delivered to one or more of its\s+recipients",
        rf"^ {{2}}(?P<address>{ADDRESS})\s*\n(?P<reason>(?: {{3,}}.*\n?)*)",
    ),
    # Microsoft Exchange / Outlook.com text part (the DSN part, when present, wins).
    _fmt(
        "exchange",
        r"delivery has failed to these recipients|your message to \S+ couldn't be delivered"
        r"|remote server returned '",
        rf"(?P<address>{ADDRESS})\b(?:(?!Remote Server returned).)*?"
        r"Remote Server returned '(?P<reason>[^']*)'",
    ),
    # Yahoo: "<user@host>:" then "Remote host said: ...".
    _fmt(
        "yahoo",
        r"we were unable to deliver your message to the following address",
        rf"^<(?P<address>{ADDRESS})>:\s*\n(?P<reason>(?:.+\n?)*)",
    ),
    # GroupWise: address followed by a parenthesised reason.
    _fmt(
        "groupwise",
        r"the message that you sent was undeliverable to the following",
        rf"^\s+(?P<address>{ADDRESS})\s*\((?P<reason>[^)]*)\)",
    ),
)

#: Generic texts: the address comes after a failure phrase (same or following lines).
GENERIC = re.compile(
    r"(?:delivery to the following recipients? (?:failed(?: permanently)?|has been delayed)|"
    r"could not be delivered to|couldn't be delivered to|undeliverable to|"
    r"delivery (?:has )?failed (?:for|to)|failed recipients?:|message delivery to|"
    r"unable to deliver (?:your message )?to|the following (?:addresses|recipients) "
    r"(?:had permanent fatal errors|failed))"
    rf"[\s:'\"<]*(?P<address>{ADDRESS})[>'\"]?(?P<reason>.*?)(?=\n\s*\n|\Z)",
    _FLAGS | re.DOTALL,
)

TEMPORARY = re.compile(
    r"will (?:be )?retr(?:y|ied)|not yet been delivered|delivery attempts will continue"
    r"|has been delayed|is delayed|delivery (?:is )?delayed|still trying|try again later"
    r"|temporar(?:y|ily) (?:error|failure|problem|unavailable)|will keep trying",
    re.IGNORECASE,
)
PERMANENT = re.compile(
    r"permanent(?:ly)? (?:error|failure|fatal|failed)|failed permanently|given up|giving up"
    r"|could not be delivered|couldn't be delivered|undeliverable|delivery has failed"
    r"|does not exist|user unknown|no such user|mailbox unavailable",
    re.IGNORECASE,
)

_WSP = re.compile(r"\s+")


def _reason(text: str) -> str:
    return _WSP.sub(" ", text).strip()[:1000]


def permanence(reason: str, whole: str, forced_temporary: bool | None) -> bool:
    """Permanent? The failure's own status code decides; then the format; then the wording
    of the whole text, where a delay notice is always temporary."""
    status = enhanced_status(reason)
    verdict = is_permanent(status, reason)
    if verdict is not None:
        return verdict
    if forced_temporary is not None:
        return not forced_temporary
    # A delay notice is temporary; a bounce that says nothing else reports a failure.
    return not TEMPORARY.search(whole)


def parse(text: str, ignore: Callable[[str], bool]) -> tuple[str, list[Failure]]:
    """(format name, failures) for a bounce text; ``ignore`` drops addresses that are ours
    (the return path, postmaster, ...). Empty when no failed address is found."""
    for fmt in FORMATS:
        if not fmt.signature.search(text):
            continue
        failures = _collect(fmt.blocks, text, ignore, fmt.temporary)
        if failures:
            return fmt.name, failures
    return "generic", _collect(GENERIC, text, ignore, None)


def _collect(
    pattern: re.Pattern[str], text: str, ignore: Callable[[str], bool], temporary: bool | None
) -> list[Failure]:
    seen: set[str] = set()
    out = []
    for match in pattern.finditer(text):
        address = match.group("address").strip(".")
        if ignore(address) or address.lower() in seen:
            continue
        seen.add(address.lower())
        reason = _reason(match.groupdict().get("reason") or "")
        if not reason:
            # The details often follow in the next paragraph ("Technical details of ...").
            reason = _reason(text[match.end() : match.end() + 500])
        out.append(
            Failure(
                rcpt=address,
                permanent=permanence(reason, text, temporary),
                status=enhanced_status(reason),
                reason=reason or "delivery failed",
            )
        )
    return out
