"""What an incoming message means: a pure function of (envelope, message bytes, settings).

Order of the rules, and why:

1. ``unsub-<uuid>@`` recipients: the List-Unsubscribe mailto, whatever the message says.
2. ARF abuse reports (RFC 5965) before DSNs: both are multipart/report.
3. Delivery status notifications (RFC 3464); DSNs our own Postfix wrote are dropped, since
   PostfixLog already reported those bounces from its log.
4. Plain-text bounces (sent by a mailer daemon, or in one of the known formats) before
   auto-replies: bounce texts often carry ``Auto-Submitted: auto-replied`` too.
5. Auto-replies (RFC 3834 headers, the usual X- headers, vacation subjects).
6. Anything else is unclassified: kept for an operator, never an event.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses
from typing import Literal

from manycore_common.message import UUID_RE

from . import textbounce
from .reports import AbuseReport, Failure, abuse_report, delivery_report

Kind = Literal[
    "unsubscribe", "bounce", "delayed", "autoreply", "spam-report", "own-dsn", "unclassified"
]

_OUR_LOCAL_PART = re.compile(r"^(bounce|unsub)-([a-z0-9]+)$")
_MESSAGE_ID_UUID = re.compile(r"<([a-z0-9]+)@[^>]+>")
_RETURN_PATH_UUID = re.compile(r"\bbounce-([a-z0-9]+)@", re.IGNORECASE)
_DAEMON = re.compile(
    r"^(mailer-daemon|postmaster|mail-daemon|mailer|mdaemon|maildelivery)@", re.IGNORECASE
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered mail|delivery (status notification|failure|has failed)"
    r"|mail delivery (failed|failure|system|subsystem)|failure notice|returned mail"
    r"|delivery notification|non[- ]?delivery|could not be delivered|message not delivered"
    r"|nondeliverable|unzustellbar|non remis|delivery delayed|warning: message",
    re.IGNORECASE,
)
#: RFC 3834 §5 and the headers responders set in practice.
_AUTOREPLY_HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Auto-Submitted", re.compile(r"^\s*auto-replied", re.IGNORECASE)),
    ("X-Autoreply", re.compile(r".")),
    ("X-Autorespond", re.compile(r".")),
    ("X-Autoresponder", re.compile(r".")),
    ("Precedence", re.compile(r"^\s*auto_reply", re.IGNORECASE)),
    ("X-Auto-Response-Suppress", re.compile(r"\b(all|oof|autoreply)\b", re.IGNORECASE)),
)
_VACATION_SUBJECT = re.compile(
    r"out of (the )?office|auto(matic)?[- ]?(reply|response|antwort)|autoreply|on vacation"
    r"|vacation reply|away from (the )?office|abwesenheit|automatische antwort"
    r"|r[ée]ponse automatique|absence|respuesta autom[aá]tica|risposta automatica",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Envelope:
    mail_from: str  # "" for the null sender
    rcpts: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    #: Host names our own Postfix reports as (its myhostname): its DSNs are duplicates.
    own_mtas: frozenset[str] = frozenset()
    #: Abuse addresses registered with feedback loops (e.g. Yahoo's).
    abuse_addresses: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Classification:
    kind: Kind
    uuid: str | None = None
    failures: tuple[Failure, ...] = ()
    #: The complainer of a spam report, or the address that auto-replied.
    email: str | None = None
    stream_id: str | None = None
    note: str = ""
    rules: tuple[str, ...] = field(default=())


def target(envelope: Envelope) -> tuple[str | None, str | None]:
    """("bounce" | "unsub" | None, uuid) from the envelope recipients."""
    for rcpt in envelope.rcpts:
        local = rcpt.rpartition("@")[0].lower()
        match = _OUR_LOCAL_PART.match(local)
        if match and UUID_RE.fullmatch(match.group(2)):
            return match.group(1), match.group(2)
    return None, None


def uuid_of_original(original: Message | None) -> str | None:
    """The uuid of one of our messages quoted in a report: Message-ID <uuid@...>, or the
    return path bounce-<uuid>@ (Return-Path, X-ReturnPathIb)."""
    if original is None:
        return None
    for name in ("Return-Path", "X-ReturnPathIb"):
        match = _RETURN_PATH_UUID.search(str(original.get(name, "")))
        if match and UUID_RE.fullmatch(match.group(1).lower()):
            return match.group(1).lower()
    match = _MESSAGE_ID_UUID.search(str(original.get("Message-ID", "")))
    if match and UUID_RE.fullmatch(match.group(1)):
        return match.group(1)
    return None


def is_ours(address: str) -> bool:
    local = address.rpartition("@")[0].lower()
    return bool(_OUR_LOCAL_PART.match(local)) or bool(_DAEMON.match(address))


def _first_text(msg: Message) -> str:
    """The human-readable text of a message: its first text/plain part (decoded)."""
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    return payload.decode(charset, "replace")
                except LookupError:
                    return payload.decode("utf-8", "replace")
    return ""


def _from_address(msg: Message) -> str | None:
    found = [addr for _, addr in getaddresses([str(v) for v in msg.get_all("From", [])]) if addr]
    return found[0] if found else None


def classify(envelope: Envelope, data: bytes, settings: Settings) -> Classification:
    kind, uuid = target(envelope)
    if kind == "unsub":
        return Classification("unsubscribe", uuid=uuid, rules=("unsub-address",))
    try:
        return _classify(envelope, data, settings, uuid)
    except RecursionError:
        # The standard library's parser recurses per MIME level; a few kB of nesting exhaust
        # the stack. Such a message is kept for an operator, never refused or lost.
        return Classification("unclassified", uuid=uuid, note="MIME nested too deeply to parse")


def _classify(
    envelope: Envelope, data: bytes, settings: Settings, uuid: str | None
) -> Classification:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)

    abuse = abuse_report(msg)
    if abuse is not None:
        return _spam_report(abuse, uuid, envelope)

    report = delivery_report(msg)
    if report is not None:
        if report.reporting_mta and report.reporting_mta.lower() in settings.own_mtas:
            return Classification("own-dsn", uuid=uuid, note=report.reporting_mta)
        uuid = uuid or uuid_of_original(report.original)
        if report.failures:
            return Classification("bounce", uuid=uuid, failures=report.failures, rules=("dsn",))
        if report.delayed:
            return Classification("delayed", uuid=uuid, failures=report.delayed, rules=("dsn",))
        return Classification("unclassified", uuid=uuid, note="DSN without a failed recipient")

    text = _first_text(msg)
    sender = _from_address(msg) or ""
    subject = str(msg.get("Subject", ""))
    if (
        envelope.mail_from == ""
        or _DAEMON.match(sender)
        or _BOUNCE_SUBJECT.search(subject)
        or any(fmt.signature.search(text) for fmt in textbounce.FORMATS)
    ):
        name, failures = textbounce.parse(text, lambda a: is_ours(a) or _is_sender(a, sender))
        if failures:
            uuid = uuid or uuid_of_original(_embedded(msg))
            temporary = [f for f in failures if not f.permanent]
            if len(temporary) == len(failures) and textbounce.TEMPORARY.search(text):
                return Classification(
                    "delayed", uuid=uuid, failures=tuple(failures), rules=("text", name)
                )
            return Classification(
                "bounce", uuid=uuid, failures=tuple(failures), rules=("text", name)
            )

    for header, pattern in _AUTOREPLY_HEADERS:
        value = msg.get(header)
        if value is not None and pattern.search(str(value)):
            return Classification("autoreply", uuid=uuid, email=sender or None, rules=(header,))
    if _VACATION_SUBJECT.search(subject):
        return Classification("autoreply", uuid=uuid, email=sender or None, rules=("subject",))

    return Classification("unclassified", uuid=uuid, note="no rule matched")


def _is_sender(address: str, sender: str) -> bool:
    return bool(sender) and address.lower() == sender.lower()


def _embedded(msg: Message) -> Message | None:
    from .reports import original_message

    return original_message(msg)


def _spam_report(abuse: AbuseReport, uuid: str | None, envelope: Envelope) -> Classification:
    original = abuse.original
    complainer = abuse.original_rcpt
    if complainer is None and original is not None:
        to: Iterable[str] = [str(v) for v in original.get_all("To", [])]
        found = [addr for _, addr in getaddresses(list(to)) if addr]
        complainer = found[0] if found else None
    return Classification(
        "spam-report",
        uuid=uuid_of_original(original) or uuid,
        email=complainer,
        note=abuse.feedback_type or "",
        rules=("arf",),
    )
