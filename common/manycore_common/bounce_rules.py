"""How a failed delivery is classified, for PostfixLog (synchronous bounces from Postfix's
log) and MxServer (asynchronous DSNs) alike: rules kept as data (docs/ARCHITECTURE.md#code-style),
read top to bottom, first match wins.

The enhanced status code (RFC 3463, registry in RFC 5248) is the most reliable signal, so
most code rules come first; but receivers often use a generic code (5.7.1, 5.0.0) with the
real reason only in the text, so spam and block-list wording is checked before the 5.7.x
"policy" code, and text rules follow for codes that say little.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Category = Literal[
    "dns",
    "routing",
    "spam-block",
    "mailbox-full",
    "message-size",
    "invalid-recipient",
    "mailbox-unavailable",
    "policy",
    "connection",
    "content",
    "other",
]
BounceType = Literal["hard", "soft", "unroutable"]


@dataclass(frozen=True)
class Rule:
    """``pattern`` searched (case-insensitively) in the status code or in the reply text."""

    category: Category
    field: Literal["dsn", "text"]
    pattern: re.Pattern[str]


def _rule(category: Category, field: Literal["dsn", "text"], pattern: str) -> Rule:
    return Rule(category, field, re.compile(pattern, re.IGNORECASE))


CATEGORY_RULES: tuple[Rule, ...] = (
    # X.1.2 bad destination system, X.4.4 unable to route.
    _rule("dns", "dsn", r"^[45]\.(1\.2|4\.4)$"),
    # X.1.10 is "null MX" in RFC 7505 §4.2, but Microsoft uses it for an unknown recipient
    # (RESOLVER.ADR.RecipientNotFound): the text decides, null MX first.
    _rule("dns", "text", r"null ?mx|does not accept mail"),
    _rule("invalid-recipient", "dsn", r"^5\.1\.10$"),
    # X.4.6 routing loop detected.
    _rule("routing", "dsn", r"^[45]\.4\.6$"),
    # Sender authentication (SPF, DKIM, DMARC) is a policy the sender can fix, even when the
    # wording says "blocked" (e.g. Gmail's 5.7.26).
    _rule("policy", "text", r"unauthenticated|dmarc|\bspf\b|\bdkim\b"),
    _rule(
        "spam-block",
        "text",
        r"\bspam|block ?list|black ?list|\bblocked\b|\blisted\b|reputation|\brbl\b|dnsbl"
        r"|spamhaus|barracuda|junk mail|unsolicited",
    ),
    # X.2.2 mailbox full; X.3.4 message too big for system, X.2.3 too big for mailbox.
    _rule("mailbox-full", "dsn", r"^[45]\.2\.2$"),
    _rule("message-size", "dsn", r"^[45]\.(3\.4|2\.3)$"),
    # X.1.1 bad mailbox, X.1.0 other address status, X.1.3 bad syntax, X.1.6 mailbox moved.
    _rule("invalid-recipient", "dsn", r"^5\.1\.[0136]$"),
    # X.2.1 mailbox disabled, not accepting messages.
    _rule("mailbox-unavailable", "dsn", r"^[45]\.2\.1$"),
    # X.7.x security or policy status.
    _rule("policy", "dsn", r"^[45]\.7\.\d{1,3}$"),
    _rule(
        "dns",
        "text",
        r"host or domain name not found|name service error|domain not found|nullmx"
        r"|does not accept mail|no mx record",
    ),
    _rule("routing", "text", r"loops back to myself|mail forwarding loop|too many hops"),
    _rule(
        "mailbox-full",
        "text",
        r"mailbox (is )?full|over ?quota|quota exceeded|exceeded (the )?(storage|quota)"
        r"|insufficient (system )?storage",
    ),
    _rule("message-size", "text", r"message (size )?(is )?too (big|large)|size limit"),
    _rule(
        "invalid-recipient",
        "text",
        r"user unknown|unknown user|no such (user|mailbox|recipient)|does ?n[o']t exist"
        r"|recipient (address )?not found|recip(ient)?notfound|user not found"
        r"|does ?n[o']t have an? [\w.-]+ account"
        r"|invalid (recipient|mailbox)|mailbox not found|not a valid mailbox|address unknown",
    ),
    _rule(
        "mailbox-unavailable",
        "text",
        r"mailbox (temporarily )?(unavailable|disabled|inactive)|account (is )?"
        r"(disabled|inactive|suspended)",
    ),
    _rule(
        "policy",
        "text",
        r"policy|dmarc|\bspf\b|dkim|not (permitted|allowed|authori[sz]ed)|access denied"
        r"|relay(ing)? (access )?denied|rate limit|too many",
    ),
    # X.4.1 no answer from host, X.4.2 bad connection.
    _rule("connection", "dsn", r"^[45]\.4\.[12]$"),
    _rule(
        "connection",
        "text",
        r"connection refused|timed out|lost connection|network is unreachable"
        r"|no route to host|connection reset",
    ),
    # X.6.x message content or media status.
    _rule("content", "dsn", r"^[45]\.6\.\d{1,3}$"),
    _rule("content", "text", r"virus|malware|content rejected"),
)

#: A permanent failure in these categories means there is no usable destination at all
#: (no such domain, null MX, no route, a loop): "unroutable" rather than "hard".
UNROUTABLE_CATEGORIES: frozenset[Category] = frozenset({"dns", "routing"})


def category(dsn: str, text: str) -> Category:
    """The finer class of a failure from its enhanced status code and reply text."""
    for rule in CATEGORY_RULES:
        subject = dsn if rule.field == "dsn" else text
        if rule.pattern.search(subject):
            return rule.category
    return "other"


def permanent_type(cat: Category) -> BounceType:
    """Bounce type of a permanent failure (``status=bounced``, or a 5xx at RCPT)."""
    return "unroutable" if cat in UNROUTABLE_CATEGORIES else "hard"


_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_BASIC = re.compile(r"\b([245])\d\d\b")


def enhanced_status(text: str) -> str | None:
    """The first RFC 3463 enhanced status code in a text ("5.1.1"), if any."""
    match = _ENHANCED.search(text)
    return ".".join(match.groups()) if match else None


def is_permanent(status: str | None, text: str) -> bool | None:
    """True for a permanent (5.x.x / 5xx) failure, False for a temporary one, None when the
    text says neither."""
    code = status or enhanced_status(text)
    if code:
        return code.startswith("5")
    basic = _BASIC.search(text)
    if basic:
        return basic.group(1) == "5"
    return None
