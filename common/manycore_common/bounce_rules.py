"""How a failed delivery is classified, for PostfixLog (synchronous bounces from Postfix's
log) and MxServer (asynchronous DSNs and text bounces) alike: rules kept as data (DESIGN §10),
read top to bottom, first match wins. The taxonomy is closed; README "Bounce categories"
documents it.

The enhanced status code (RFC 3463, registry in RFC 5248) is a strong signal, but receivers
often use a generic code (5.7.1, 5.0.0, 5.5.0) with the real reason only in the text, and a few
use a specific code for something else (Microsoft's 5.1.10). So the order is: wording that is
unambiguous whatever the code (expired, rate limits, sender authentication, block lists, spam,
viruses, full mailboxes); then the specific codes; then the wording that only tells when the
code does not (unknown user, unknown host, ...); then the code's class.

Every pattern is linear-time: alternatives of literals and bounded classes, no nested
quantifiers, and each is compiled once. Callers pass a bounded text (a reply, a few hundred
characters), never a whole message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Category = Literal[
    "invalid-recipient",
    "mailbox-unavailable",
    "dns",
    "routing",
    "mailbox-full",
    "message-size",
    "policy",
    "spam-block",
    "rate-limited",
    "expired",
    "system-error",
    "connection",
    "content",
    "other",
]
BounceType = Literal["hard", "soft", "unroutable"]

#: Every category, in the order of README's table.
CATEGORIES: tuple[Category, ...] = Category.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Rule:
    """``pattern`` searched (case-insensitively) in the status code or in the reply text."""

    category: Category
    field: Literal["dsn", "text"]
    pattern: re.Pattern[str]


def _rule(category: Category, field: Literal["dsn", "text"], pattern: str) -> Rule:
    return Rule(category, field, re.compile(pattern, re.IGNORECASE))


# Shared pieces of wording (plain alternatives, no nested quantifiers).
_USER = r"(?:user|recipient|mailbox|address|account|addressee|e-?mail(?: address)?|local part)"
_SPACE = r"[ \t]{1,3}"

CATEGORY_RULES: tuple[Rule, ...] = (
    # --- Wording that decides whatever the code says -------------------------------------
    # RFC 7505 null MX, before Microsoft's 5.1.10 (RecipientNotFound) below.
    _rule("dns", "text", r"null ?mx|does not accept (?:e-?)?mail\b"),
    # Sending too fast, too many connections (RFC 3463 X.7.x is policy; the text is finer).
    _rule(
        "rate-limited",
        "text",
        r"rate.?limit|rate of (?:unsolicited )?mail|too many (?:messages|mails|emails|connections"
        r"|concurrent|recipients|sessions|invalid recipients|errors)|throttl|slow down"
        r"|(?:sending|message|receiving|connection) (?:rate|limit) (?:exceeded|reached)"
        r"|exceeded (?:the )?(?:message |sending |connection )?rate|too fast"
        r"|receiving mail (?:at a rate|too quickly)"
        r"|temporarily deferred due to (?:user )?complaints"
        r"|exceeded .{0,30}limit for (?:the )?number of|frequency limit",
    ),
    # Sender authentication and identity (SPF, DKIM, DMARC, PTR): policy the sender can fix,
    # even when the wording says "blocked" (e.g. Gmail's 5.7.26).
    _rule(
        "policy",
        "text",
        r"unauthenticated|\bdmarc\b|\bspf\b|\bdkim\b|sender policy framework"
        r"|reverse (?:dns|lookup|hostname)|\bptr\b|no rdns|rdns (?:lookup|check)"
        r"|(?:helo|ehlo) .{0,20}(?:rejected|invalid|not)",
    ),
    # The sender's address or domain refused (X.1.7, X.1.8): the sender's problem, not the
    # recipient's, whatever the wording ("does not exist").
    _rule("policy", "dsn", r"^[45]\.1\.[78]$"),
    _rule(
        "policy",
        "text",
        r"sender (?:address|domain)|domain of sender|sender .{0,40}(?:rejected|refused|denied"
        r"|unknown|invalid|not exist)|recipient preferences"
        r"|due to (?:the )?(?:recipient|user)'?s? (?:preferences|settings)",
    ),
    # Block lists and reputation: a judgement on the sending host, not on this message.
    _rule(
        "policy",
        "text",
        r"block ?list|black ?list|deny ?list|\brbl\b|dnsbl|spamhaus|spamcop|sorbs|barracuda"
        r"|blocked using|listed (?:at|in|on|by)|reputation|proofpoint|cloudmark|\bip\b.{0,40}"
        r"(?:blocked|banned|rejected)|(?:client|host|sender|ip address|network)"
        r" .{0,40}(?:blocked|banned|not allowed)|bad sender",
    ),
    # The message itself was judged spam.
    _rule(
        "spam-block",
        "text",
        r"\bspam\b|spam-?like|spammy|spam ?(?:score|detected|filter|content|message|policy)"
        r"|junk ?mail|unsolicited|\bbulk ?mail|\bUBE\b|message (?:looks|appears) (?:to be )?"
        r"(?:like )?spam|content (?:looks|appears) (?:to be )?suspicious|high probability of",
    ),
    _rule(
        "content",
        "text",
        r"virus|malware|infected|trojan|worm\b|phishing|dangerous attachment"
        r"|attachment .{0,30}(?:not allowed|blocked|prohibited|rejected)"
        r"|banned (?:attachment|file)",
    ),
    _rule(
        "mailbox-full",
        "text",
        r"mailbox (?:is )?full|over ?quota|quota (?:exceeded|full)|exceeded (?:the |his |her "
        r"|their )?(?:storage|quota|mailbox size)|(?:mailbox|account|disk) (?:storage )?(?:limit"
        r"|size) (?:exceeded|reached)|out of (?:storage|disk) space|exceeded storage allocation"
        r"|mailbox (?:has )?exceeded|insufficient (?:disk )?(?:space|storage) (?:for|in) "
        r"(?:the )?(?:user|mailbox|recipient)|not enough (?:space|storage)|mail ?box.{0,20}full",
    ),
    _rule(
        "message-size",
        "text",
        r"message (?:size |length )?(?:is |was )?too (?:big|large|long)|size limit|message size"
        r"|exceeds? (?:the )?(?:maximum|max|fixed|allowed) (?:message )?size"
        r"|(?:message|mail) (?:length|size) exceeds|too large",
    ),
    # --- Specific codes ------------------------------------------------------------------
    # X.1.2 bad destination system, X.4.4 unable to route.
    _rule("dns", "dsn", r"^[45]\.(?:1\.2|4\.4)$"),
    # X.1.10 is "null MX" in RFC 7505 §4.2, but Microsoft uses it for an unknown recipient
    # (RESOLVER.ADR.RecipientNotFound); the real null MX wording matched above.
    _rule("invalid-recipient", "dsn", r"^5\.1\.10$"),
    # X.4.6 routing loop detected.
    _rule("routing", "dsn", r"^[45]\.4\.6$"),
    # X.2.2 mailbox full; X.3.4 message too big for system, X.2.3 too big for mailbox.
    _rule("mailbox-full", "dsn", r"^[45]\.2\.2$"),
    _rule("message-size", "dsn", r"^[45]\.(?:3\.4|2\.3)$"),
    # X.1.1 bad mailbox, X.1.3 bad syntax, X.1.6 mailbox moved.
    _rule("invalid-recipient", "dsn", r"^5\.1\.[136]$"),
    _rule(
        "invalid-recipient",
        "text",
        rf"{_USER}{_SPACE}(?:is )?unknown|unknown{_SPACE}{_USER}|no such{_SPACE}{_USER}"
        r"|recipnotfound|recipientnotfound|address couldn't be found"
        r"|recipient address rejected: access denied|(?<!sender )address rejected",
    ),
    # X.2.1 mailbox disabled, not accepting messages.
    _rule(
        "mailbox-unavailable",
        "text",
        r"inactive|disabled|suspended|deactivated|(?:account|mailbox) (?:is )?(?:locked|frozen"
        r"|closed|blocked|expired)|no longer (?:active|in use|available)|temporarily unavailable",
    ),
    _rule("mailbox-unavailable", "dsn", r"^[45]\.2\.1$"),
    # X.7.x security or policy: after the wording that makes it finer, before the wording
    # that a policy refusal may quote ("recipient rejected").
    _rule(
        "invalid-recipient",
        "text",
        rf"{_USER}{_SPACE}(?:is )?unknown|unknown{_SPACE}{_USER}|no such{_SPACE}{_USER}"
        r"|(?:does ?n[o']t|does not|doesn't|not) exist|recipnotfound|recipientnotfound"
        rf"|{_USER} (?:was )?not found|invalid{_SPACE}{_USER}|not a valid{_SPACE}{_USER}"
        rf"|(?:bad|illegal|unknown|unrouteable) (?:destination )?{_USER}"
        r"|no mailbox|mailbox unavailable"
        rf"|{_USER} (?:is )?(?:not (?:listed|known|valid|registered|our customer)|invalid)"
        r"|not our customer|has been (?:deleted|removed|terminated)"
        r"|not a valid|no (?:such )?(?:account|user)"
        r"|unknown or illegal|undeliverable address|user doesn't have"
        r"|not have an? [\w.-]{1,40} account"
        r"|no valid recipients|not listed in|no .{0,20}by that name|recipient rejected",
    ),
    _rule("policy", "dsn", r"^[45]\.7\.\d{1,3}$"),
    # --- Wording for the codes that say little (X.0.0, X.5.x, bare 550) -------------------
    _rule(
        "dns",
        "text",
        r"host or domain name not found|name service error|domain (?:name )?not found"
        r"|host (?:not found|unknown)|unknown host|no such domain|domain (?:does not|doesn't) exist"
        r"|no mx|mx (?:record|lookup)|dns (?:error|lookup|failure|resolution)|unrouteable address"
        r"|unroutable|all relevant mx records|no route for|nxdomain|domain (?:is )?invalid"
        r"|invalid domain|unknown domain|domain .{0,30}not (?:exist|found|resolve)",
    ),
    _rule(
        "routing", "text", r"loops back to myself|mail (?:forwarding )?loop|too many hops|\bloop"
    ),
    # Gave up after retries: the queue lifetime ran out (RFC 3463 X.4.7), unless the last
    # reply said something finer (above).
    _rule(
        "expired",
        "text",
        r"retry time(?:out)? (?:not reached|exceeded)|delivery time expired|message expired"
        r"|expired after|been in the queue too long|too long in (?:the )?queue"
        r"|queue (?:life ?time|timeout) (?:exceeded|expired)|could not be delivered within"
        r"|was not delivered within|(?:maximum|max) (?:queue|delivery) time"
        r"|giving up after|gave up after|delivery attempts? (?:have |has )?(?:failed|expired) for"
        r"|unable to deliver.{0,40}(?:for|within) \d{1,3} (?:days|hours)"
        r"|message timeout|no delivery within",
    ),
    # X.4.1 no answer from host, X.4.2 bad connection.
    _rule("connection", "dsn", r"^[45]\.4\.[012]$"),
    _rule(
        "connection",
        "text",
        r"connection (?:refused|reset|closed|dropped|lost|timed out)|timed? ?out|lost connection"
        r"|network is unreachable|no route to host|could not connect|unable to connect"
        r"|connect to .{0,80}failed|tls|ssl|handshake|conversation with|not reachable"
        r"|establish (?:an )?(?:smtp )?connection|unreachable",
    ),
    # X.6.x message content or media status.
    _rule("content", "dsn", r"^[45]\.6\.\d{1,3}$"),
    _rule("content", "text", r"content (?:rejected|refused)|message (?:rejected|refused)"),
    _rule(
        "policy",
        "text",
        r"policy|not (?:permitted|allowed|authori[sz]ed)|access denied|relay(?:ing)? "
        r"(?:access )?(?:denied|not permitted|prohibited)|not (?:accepted|authorized) to relay"
        r"|rejected|refused|denied|blocked|prohibited|filter|forbidden|administrative|banned",
    ),
    # Gave up after retries: the queue lifetime ran out (X.4.7, RFC 3463 §3.5).
    _rule("expired", "dsn", r"^[45]\.4\.7$"),
    # X.3.x mail system status, X.5.x protocol status: the receiving system failed.
    _rule("system-error", "dsn", r"^[45]\.[35]\.\d{1,3}$"),
    _rule(
        "system-error",
        "text",
        r"system (?:error|failure|full|not available|unavailable)|internal (?:server )?error"
        r"|local error|local problem|temporary (?:local )?(?:error|failure|problem)"
        r"|server (?:error|busy|unavailable)|service (?:not available|unavailable)"
        r"|insufficient (?:system )?(?:storage|resources)|try again later|out of memory"
        r"|resources|i/o error|configuration error|misconfigured",
    ),
    # X.1.x other address status.
    _rule("invalid-recipient", "dsn", r"^5\.1\.\d{1,3}$"),
)

#: A permanent failure in these categories means there is no usable destination at all
#: (no such domain, null MX, no route, a loop): "unroutable" rather than "hard".
UNROUTABLE_CATEGORIES: frozenset[Category] = frozenset({"dns", "routing"})

#: The reply text is cut to this before the rules read it (the reason is at its start).
MAX_TEXT = 2000


def category(dsn: str | None, text: str) -> Category:
    """The category of a failure from its enhanced status code and reply text."""
    code = (dsn or "").strip()
    text = text[:MAX_TEXT]
    for rule in CATEGORY_RULES:
        subject = code if rule.field == "dsn" else text
        if subject and rule.pattern.search(subject):
            return rule.category
    return "other"


def matching_rule(dsn: str | None, text: str) -> int | None:
    """The index of the rule that decides (for diagnostics), None when none does."""
    code, text = (dsn or "").strip(), text[:MAX_TEXT]
    for index, rule in enumerate(CATEGORY_RULES):
        subject = code if rule.field == "dsn" else text
        if subject and rule.pattern.search(subject):
            return index
    return None


def permanent_type(cat: Category) -> BounceType:
    """Bounce type of a permanent failure (``status=bounced``, or a 5xx at RCPT)."""
    return "unroutable" if cat in UNROUTABLE_CATEGORIES else "hard"


_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d])")
_BASIC = re.compile(r"(?<!\d)([245])\d\d(?!\d)")


def enhanced_status(text: str) -> str | None:
    """The first RFC 3463 enhanced status code in a text ("5.1.1"), if any."""
    match = _ENHANCED.search(text[:MAX_TEXT])
    return ".".join(match.groups()) if match else None


def basic_status(text: str) -> str | None:
    """The first RFC 5321 reply code (4xx/5xx) in a text, if any."""
    match = _BASIC.search(text[:MAX_TEXT])
    return match.group(0) if match and match.group(1) in "45" else None


def is_permanent(status: str | None, text: str) -> bool | None:
    """True for a permanent (5.x.x / 5xx) failure, False for a temporary one, None when the
    text says neither."""
    code = status or enhanced_status(text)
    if code:
        if code.startswith("2"):
            return None
        return code.startswith("5")
    basic = basic_status(text)
    if basic:
        return basic.startswith("5")
    return None
