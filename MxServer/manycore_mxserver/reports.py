"""Machine-readable reports: RFC 3464 delivery status notifications and RFC 5965 abuse
(ARF) reports, parsed from an already-parsed message. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from manycore_common.bounce_rules import enhanced_status, is_permanent

#: Addresses in header fields like "rfc822; user@example.com" (RFC 3464 §2.3.2).
_TYPED_ADDRESS = re.compile(r"^\s*(?:[\w-]+\s*;\s*)?<?([^<>\s;]+@[^<>\s;]+?)>?\s*$")
_WSP = re.compile(r"\s+")


@dataclass(frozen=True)
class Failure:
    """One recipient the report says could not be (or was not yet) delivered."""

    rcpt: str
    permanent: bool
    status: str | None
    reason: str
    remote_mta: str | None = None


@dataclass(frozen=True)
class DeliveryReport:
    reporting_mta: str | None
    failures: tuple[Failure, ...]
    delayed: tuple[Failure, ...]
    original: Message | None


@dataclass(frozen=True)
class AbuseReport:
    feedback_type: str | None
    original_rcpt: str | None
    original: Message | None


def typed_address(value: str | None) -> str | None:
    if not value:
        return None
    match = _TYPED_ADDRESS.match(str(value))
    return match.group(1).strip().strip(".") if match else None


def _typed_text(value: str | None) -> str:
    """The text of a typed field ("smtp; 550 5.1.1 ..." → "550 5.1.1 ..."), unfolded."""
    if not value:
        return ""
    text = _WSP.sub(" ", str(value)).strip()
    kind, sep, rest = text.partition(";")
    return rest.strip() if sep and re.fullmatch(r"[\w-]+", kind.strip()) else text


def report_parts(msg: Message, part_type: str) -> list[Message]:
    """Every part of the given content type anywhere in the message."""
    return [part for part in msg.walk() if part.get_content_type() == part_type]


def original_message(msg: Message) -> Message | None:
    """The returned original (message/rfc822) or its headers (text/rfc822-headers)."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if ctype in ("text/rfc822-headers", "text/global-headers"):
            from email.parser import Parser

            text = part.get_payload(decode=True)
            raw = text if isinstance(text, bytes) else b""
            return Parser().parsestr(raw.decode("utf-8", "replace"), headersonly=True)
    return None


def _status_groups(part: Message) -> list[Message]:
    """The field groups of a message/delivery-status part: per-message first, then one per
    recipient (RFC 3464 §2.1). The email package parses them as sub-messages; some senders
    produce a single text blob instead, which is split on blank lines here."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
        return list(payload)
    from email.parser import Parser

    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    blocks = [b for b in re.split(r"\r?\n\s*\r?\n", text.strip()) if b.strip()]
    return [Parser().parsestr(block, headersonly=True) for block in blocks]


def delivery_report(msg: Message) -> DeliveryReport | None:
    parts = report_parts(msg, "message/delivery-status") + report_parts(
        msg, "message/global-delivery-status"
    )
    if not parts:
        return None
    groups = _status_groups(parts[0])
    if not groups:
        return DeliveryReport(None, (), (), original_message(msg))
    per_message, recipients = groups[0], groups[1:]
    if per_message.get("Final-Recipient") or per_message.get("Original-Recipient"):
        # No per-message group at all (seen in the wild): every group is a recipient.
        recipients = groups
    failures: list[Failure] = []
    delayed: list[Failure] = []
    for group in recipients:
        rcpt = typed_address(group.get("Final-Recipient")) or typed_address(
            group.get("Original-Recipient")
        )
        action = str(group.get("Action", "")).strip().lower()
        if rcpt is None or action not in ("failed", "delayed"):
            continue  # delivered / relayed / expanded: nothing failed
        diagnostic = _typed_text(group.get("Diagnostic-Code"))
        status = str(group.get("Status", "")).strip() or None
        status = enhanced_status(status) if status else enhanced_status(diagnostic)
        permanent = action == "failed" and bool(is_permanent(status, diagnostic))
        failure = Failure(
            rcpt=rcpt,
            permanent=permanent,
            status=status,
            reason=diagnostic or (f"status {status}" if status else action),
            remote_mta=_typed_text(group.get("Remote-MTA")) or None,
        )
        (failures if action == "failed" else delayed).append(failure)
    reporting = _typed_text(per_message.get("Reporting-MTA")) or None
    return DeliveryReport(reporting, tuple(failures), tuple(delayed), original_message(msg))


def abuse_report(msg: Message) -> AbuseReport | None:
    parts = report_parts(msg, "message/feedback-report")
    if not parts:
        return None
    groups = _status_groups(parts[0])
    fields = groups[0] if groups else Message()
    return AbuseReport(
        feedback_type=(str(fields.get("Feedback-Type", "")).strip().lower() or None),
        original_rcpt=typed_address(fields.get("Original-Rcpt-To")),
        original=original_message(msg),
    )
