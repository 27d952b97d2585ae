"""How a failed delivery is classified, for PostfixLog (synchronous bounces from Postfix's
log) and MxServer (asynchronous DSNs and text bounces) alike: rules kept as data
(docs/ARCHITECTURE.md#code-style), read top to bottom, first match wins. The taxonomy is
closed; README "Bounce categories" documents it.

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
    """``pattern`` searched (case-insensitively) in the status code ("dsn") or in the reply
    text ("text"); a "both" rule needs ``code`` to match the status code as well."""

    category: Category
    field: Literal["dsn", "text", "both"]
    pattern: re.Pattern[str]
    code: re.Pattern[str] | None = None


def _rule(category: Category, field: Literal["dsn", "text"], pattern: str) -> Rule:
    return Rule(category, field, re.compile(pattern, re.IGNORECASE))


def _both(category: Category, code: str, pattern: str) -> Rule:
    return Rule(category, "both", re.compile(pattern, re.IGNORECASE), re.compile(code))


#: Wording of a report whose MTA gave up retrying (the queue lifetime ran out).
GAVE_UP = (
    r"retry time(?:out)? (?:not reached|exceeded)|delivery time expired|message expired"
    r"|expired after|been in the queue too long|too long in (?:the )?queue"
    r"|queue (?:life ?time|timeout) (?:exceeded|expired)|could not be delivered within"
    r"|was not delivered within|(?:maximum|max) (?:queue|delivery) time"
    r"|giving up after|gave up after|delivery attempts? (?:have |has )?(?:failed|expired)"
    r"|unable to deliver.{0,40}(?:for|within) \d{1,3} (?:days|hours)|envelope expired"
    r"|message timeout|no delivery within|failing for a long time|failed \d{1,3} attempts"
    r"|not (?:been )?delivered (?:for|within)|did not receive your message|multiple retries"
    r"|retry timeout|giving up\.|could not deliver for the last"
)

# Shared pieces of wording (plain alternatives, no nested quantifiers).
_USER = r"(?:user|recipient|mailbox|address|account|addressee|e-?mail(?: address)?|local part)"
_SPACE = r"[ \t]{1,3}"

CATEGORY_RULES: tuple[Rule, ...] = (
    # --- Wording that decides whatever the code says -------------------------------------
    # The sender's address or domain refused (X.1.7, X.1.8): the sender's problem, not the
    # recipient's, whatever the wording ("no such domain").
    _rule("policy", "dsn", r"^[45]\.1\.[78]$"),
    # No mail server for the domain: RFC 7505 null MX, NXDOMAIN, before Microsoft's 5.1.10
    # (RecipientNotFound) and before "does not exist" means a user.
    _rule(
        "dns",
        "text",
        r"null ?mx|does not accept (?:e-?)?mail\b|no smtp service|domain (?:does not|doesn't)"
        r" exist|domain (?:is )?not reachable|host or domain name not found|nxdomain"
        r"|domain name not found|no such domain|unrouteable address|all relevant mx records"
        r"|name service error",
    ),
    # Sending too fast, too many connections (RFC 3463 X.7.x is policy; the text is finer).
    _rule(
        "rate-limited",
        "text",
        r"rate.?limit|rate of (?:unsolicited )?mail|too many (?:messages|mails|emails|connections"
        r"|concurrent|recipients|sessions|invalid recipients|errors)|throttl|slow down"
        r"|(?:sending|message|receiving|connection) (?:rate|limit) (?:exceeded|reached)"
        r"|exceeded (?:the )?(?:message |sending |connection )?rate|too fast"
        r"|receiving mail (?:at a rate|too quickly)|unexpected volume|frequency limit"
        r"|(?:sending|daily|hourly) quota|exceeded .{0,30}limit for (?:the )?number of",
    ),
    _rule(
        "mailbox-full",
        "text",
        r"mailbox (?:is )?full|over ?quota|quota|exceeded (?:the |his |her "
        r"|their )?(?:storage|mailbox size)|(?:mailbox|account|disk) (?:storage )?(?:limit"
        r"|size) (?:exceeded|reached)|out of (?:storage|disk) space|exceeded storage allocation"
        r"|mailbox (?:has )?exceeded|insufficient (?:disk )?(?:space|storage) (?:for|in) "
        r"(?:the )?(?:user|mailbox|recipient)|not enough (?:space|storage)|mail ?box.{0,20}full"
        r"|(?:mail ?)?folder (?:is )?full|full mailbox",
    ),
    # The receiving system broke (a delivery command, a directory server).
    _rule(
        "system-error",
        "text",
        r"command (?:died|output|failed)|ldap server|mail system (?:error|full)|local configuration"
        r"|does not support tls|internal (?:system |server )?error|mailer error|transaction failed"
        r"|insufficient disk space|no space left|disk full|pipe to \|"
        r"|not accepting (?:network )?messages|could not load",
    ),
    # Sender authentication and identity (SPF, DKIM, DMARC, PTR): policy the sender can fix,
    # even when the wording says "blocked" (e.g. Gmail's 5.7.26).
    _rule(
        "policy",
        "text",
        r"unauthenticated|\bdmarc\b|\bspf\b|\bdkim\b|sender policy framework|authentication"
        r"|reverse (?:dns|lookup|hostname)|\bptr\b|no rdns|rdns (?:lookup|check)|mismatch"
        r"|(?:helo|ehlo) .{0,20}(?:rejected|invalid|not)|purported responsible",
    ),
    # The sender's address or domain refused (X.1.7, X.1.8): the sender's problem, not the
    # recipient's, whatever the wording ("does not exist").
    _rule(
        "policy",
        "text",
        r"sender (?:address|domain)|domain of sender|sender .{0,40}(?:rejected|refused|denied"
        r"|unknown|invalid|not exist)|recipient preferences|valid from:|from: domain"
        r"|verification failed|sending ips?\b|ip for sending|unverif(?:y|i)able"
        r"|due to (?:the )?(?:recipient|user)'?s? (?:preferences|settings)",
    ),
    # A message that breaks the format rules (RFC 5322) is refused as policy, even when the
    # refusal mentions spam.
    _rule(
        "policy",
        "text",
        r"rfc ?5322|rfc ?2822|rfc ?822|not (?:rfc )?compliant|header error|malformed|resent-from"
        r"|multiple .{0,20}headers|protocol violation",
    ),
    # Links in the message on a URI block list: the message was judged spam.
    _rule("spam-block", "text", r"blacklisted (?:url|link)|uribl|surbl|spam ?signature"),
    # Block lists and reputation: a judgement on the sending host, not on this message.
    _rule(
        "policy",
        "text",
        r"block ?list|black ?list|deny ?list|\brbl\b|dnsbl|spamhaus|spamcop|sorbs|barracuda"
        r"|blocked using|(?<!not )listed (?:at|in|on|by)|reputation|proofpoint|cloudmark"
        r"|\bip\b.{0,40}(?:blocked|banned|rejected)|(?:client|host|sender|ip address|network)"
        r" .{0,40}(?:blocked|banned|not allowed)|bad sender|unwanted (?:messages|mail)",
    ),
    # The message itself was judged spam.
    _rule(
        "spam-block",
        "text",
        r"spam|junk ?mail|unsolicited|\bbulk ?mail|\bUBE\b"
        r"|content (?:looks|appears) (?:to be )?suspicious|high probability of",
    ),
    _rule(
        "content",
        "text",
        r"virus|malware|infected|trojan|worm\b|phishing|dangerous attachment"
        r"|attachment .{0,30}(?:not allowed|blocked|prohibited|rejected)"
        r"|banned (?:attachment|file)|media error|content presents|potential security issue",
    ),
    # Lines or headers beyond the receiver's limits (RFC 5322 §2.1.1): the content.
    _rule("content", "text", r"line (?:limit|length|too long)|headers? too (?:large|long|many)"),
    _rule(
        "message-size",
        "text",
        r"message (?:size |length )?(?:is |was )?too (?:big|large|long)|size limit|message size"
        r"|exceeds? (?:the )?(?:maximum|max|fixed|allowed) (?:message )?size"
        r"|(?:message|mail) (?:length|size) exceeds|too large",
    ),
    # Exchange Online's directory-based edge blocking: "5.4.1 ... Access denied" means no
    # such recipient; other 5.4.1 refusals are policy (below).
    _both("invalid-recipient", r"^5\.4\.1$", r"access denied"),
    # Strong wording for an unknown user, before codes that other servers misuse (5.2.1).
    _rule(
        "invalid-recipient",
        "text",
        rf"{_USER}{_SPACE}(?:is )?unknown|unknown{_SPACE}{_USER}|no such{_SPACE}{_USER}"
        r"|recipnotfound|recipientnotfound|address couldn't be found|not listed in"
        r"|by that name|not recognized|no longer valid|wrong or no longer|inexistente"
        r"|n'existe pas|no existe|existiert nicht|invalid .{0,20}userid|unbekannt"
        r"|(?:^|[#\d.]{5} )address rejected",
    ),
    # X.2.1 mailbox disabled, not accepting messages.
    _rule(
        "mailbox-unavailable",
        "text",
        r"inactive|disabled|suspended|deactivated|(?:account|mailbox) (?:is )?(?:locked|frozen"
        r"|closed|blocked|expired)|no longer (?:active|in use|available)|temporarily unavailable"
        r"|temporar(?:y|ily) locked|discontinued",
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
    # X.1.1 bad mailbox, X.1.0 other address status, X.1.3 bad syntax, X.1.6 moved.
    _rule("invalid-recipient", "dsn", r"^5\.1\.[0136]$"),
    _rule("mailbox-unavailable", "dsn", r"^[45]\.2\.1$"),
    # X.6.x message content or media status.
    _rule("content", "dsn", r"^[45]\.6\.\d{1,3}$"),
    # Weaker wording for an unknown user, before the X.7.x code a refusal may carry.
    _rule(
        "invalid-recipient",
        "text",
        r"(?:does ?n[o']t|does not|doesn't|not) exist"
        rf"|{_USER} (?:was )?not found|invalid{_SPACE}{_USER}|not a valid{_SPACE}{_USER}"
        rf"|(?:bad|illegal|unknown|unrouteable) (?:destination )?{_USER}"
        r"|no mailbox|mailbox unavailable"
        rf"|{_USER} (?:is )?(?:not (?:listed|known|valid|registered|our customer)|invalid)"
        r"|not our customer|has been (?:deleted|removed|terminated)"
        r"|not a valid|no (?:such )?(?:account|user)"
        r"|unknown or illegal|undeliverable address|user doesn't have"
        r"|not have an? [\w.-]{1,40} account"
        r"|no valid recipients|no .{0,20}by that name|recipient rejected",
    ),
    # X.7.x security or policy status; 5.4.1 as Microsoft uses it (rejected by the domain).
    _rule("policy", "dsn", r"^[45]\.7\.\d{1,3}$|^5\.4\.1$"),
    # --- Wording for the codes that say little (X.0.0, X.5.x, bare 550) -------------------
    _rule(
        "dns",
        "text",
        r"name service error|domain (?:name )?not found|host (?:not found|unknown)|unknown host"
        r"|no mx|mx (?:record|lookup)|dns (?:error|lookup|failure|resolution)|unroutable"
        r"|no route for|domain (?:is )?invalid|invalid domain|unknown domain"
        r"|domain .{0,30}not (?:exist|found|resolve)",
    ),
    _rule(
        "routing", "text", r"loops back to myself|mail (?:forwarding )?loop|too many hops|\bloop"
    ),
    # Gave up after retries: the queue lifetime ran out (RFC 3463 X.4.7), when the report says so:
    # before the connection wording the last attempt's reply may quote.
    _rule("expired", "text", GAVE_UP),
    # X.4.1 no answer from host, X.4.2 bad connection.
    _rule("connection", "dsn", r"^4\.4\.[012]$"),
    _rule(
        "connection",
        "text",
        r"connection (?:refused|reset|closed|dropped|lost|timed out)|timed? ?out|lost connection"
        r"|network is unreachable|no route to host|could not connect|unable to connect"
        r"|connect to .{0,80}failed|handshake|conversation with|not reachable"
        r"|establish (?:an )?(?:smtp )?connection|unreachable|network error|socket error"
        r"|did not accept (?:our )?(?:requests to )?connect|did not respond|not responding"
        r"|connection to (?:the )?mail exchanger",
    ),
    _rule("content", "text", r"content (?:rejected|refused)|message (?:rejected|refused)"),
    _rule(
        "policy",
        "text",
        r"policy|not (?:permitted|allowed|authori[sz]ed)|access denied|relay(?:ing)? "
        r"(?:access )?(?:denied|not permitted|prohibited)|not (?:accepted|authorized) to relay"
        r"|rejected|refused|denied|blocked|prohibited|filter|forbidden|administrative|banned",
    ),
    # X.4.7 delivery time expired, when the last reply did not say something finer.
    _rule("expired", "dsn", r"^[45]\.4\.7$"),
    # X.3.x mail system status: the receiving system failed.
    _rule("system-error", "dsn", r"^[45]\.3\.\d{1,3}$"),
    _rule(
        "system-error",
        "text",
        r"system (?:error|failure|full|not available|unavailable)|local error|local problem"
        r"|temporary local|server (?:error|busy|unavailable)|service (?:currently )?"
        r"(?:not available|unavailable)|insufficient (?:system )?(?:storage|resources)"
        r"|out of memory|resources|i/o error|configuration error|misconfigured|does not support",
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
    index = matching_rule(code, text)
    return "other" if index is None else CATEGORY_RULES[index].category


def matching_rule(dsn: str | None, text: str) -> int | None:
    """The index of the rule that decides (for diagnostics), None when none does."""
    code, text = (dsn or "").strip(), text[:MAX_TEXT]
    for index, rule in enumerate(CATEGORY_RULES):
        if rule.code is not None and not rule.code.search(code):
            continue
        subject = code if rule.field == "dsn" else text
        if subject and rule.pattern.search(subject):
            return index
    return None


def permanent_type(cat: Category) -> BounceType:
    """Bounce type of a permanent failure (``status=bounced``, or a 5xx at RCPT)."""
    return "unroutable" if cat in UNROUTABLE_CATEGORIES else "hard"


_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
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
