"""Machine-readable reports: RFC 3464 delivery status notifications (and RFC 6533's
message/global-delivery-status) and RFC 5965 abuse (ARF) reports, read from a message that
:mod:`bounded` already parsed and flattened. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import Parser

from manycore_common.bounce_rules import Category, enhanced_status

from .bounded import children

_WSP = re.compile(r"\s+")
_TYPE_PREFIX = re.compile(r"^[\w.-]{1,32}\s{0,8};")
_ANGLE = re.compile(r"<([^<>\s]{1,320})>")
_BARE = re.compile(r"[^\s<>;,\"'()\[\]]{1,64}@[^\s<>;,\"'()\[\]]{1,255}")
_BLOCK_SPLIT = re.compile(r"\n[ \t]{0,16}\n")
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]{0,60})[ \t]{0,8}:[ \t]{0,16}(.*)$")
_FAILED = ("failed", "failure", "error", "fail")


@dataclass(frozen=True)
class Failure:
    """One recipient a report says could not be (or was not yet) delivered."""

    rcpt: str
    permanent: bool
    status: str | None
    reason: str
    remote_mta: str | None = None
    #: One of bounce_rules.CATEGORIES (README, "Bounce categories").
    category: Category = "other"
    #: The Original-Recipient of a DSN (RFC 3464 §2.3.1), when it has one.
    original_rcpt: str | None = None
    #: The Final-Recipient of a DSN (RFC 3464 §2.3.2), when it differs from ``rcpt``.
    final_rcpt: str | None = None


@dataclass(frozen=True)
class Group:
    """One recipient group of a DSN, as written (before classification)."""

    rcpt: str
    original_rcpt: str | None
    final_rcpt: str | None
    action: str
    status: str | None
    diagnostic: str
    remote_mta: str | None


@dataclass(frozen=True)
class DeliveryReport:
    reporting_mta: str | None
    groups: tuple[Group, ...]


@dataclass(frozen=True)
class AbuseReport:
    feedback_type: str | None
    original_rcpt: str | None
    original: Message | None


def address_in(value: str | None) -> str | None:
    """The mailbox of an address field: "rfc822; <user@example.com>" → user@example.com
    (RFC 3464 §2.3.2 address-type; also angle brackets and stray quotes seen in the wild)."""
    if not value:
        return None
    text = _TYPE_PREFIX.sub("", _WSP.sub(" ", str(value)).strip(), count=1).strip()
    angle = _ANGLE.search(text)
    candidate = angle.group(1) if angle else text
    bare = _BARE.search(candidate)
    if bare is None:
        return None
    return bare.group(0).strip(".").strip("'\"") or None


def typed_text(value: str | None) -> str:
    """The text of a typed field ("smtp; 550 5.1.1 ..." → "550 5.1.1 ..."), unfolded."""
    if not value:
        return ""
    text = _WSP.sub(" ", str(value)).strip()
    return _TYPE_PREFIX.sub("", text, count=1).strip()


def _walk(msg: Message) -> Iterator[Message]:
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        stack.extend(reversed(children(part)))


def report_parts(msg: Message, *types: str) -> list[Message]:
    return [part for part in _walk(msg) if part.get_content_type() in types]


def original_message(msg: Message) -> Message | None:
    """The returned original (message/rfc822) or its headers (text/rfc822-headers)."""
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if ctype in ("text/rfc822-headers", "text/global-headers"):
            payload = part.get_payload()
            return Parser().parsestr(payload if isinstance(payload, str) else "", headersonly=True)
    return None


def field_blocks(part: Message) -> list[dict[str, str]]:
    """The field groups of a message/*delivery-status or message/feedback-report part: the
    per-message group first, then one per recipient (RFC 3464 §2.1). The email package
    parses message/delivery-status as sub-messages; other types arrive as text."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [
            {name.lower(): str(value) for name, value in block.items()}
            for block in payload
            if isinstance(block, Message)
        ]
    text = payload if isinstance(payload, str) else ""
    return [b for b in (_fields(block) for block in _BLOCK_SPLIT.split(text)) if b]


def _fields(block: str) -> dict[str, str]:
    """ "Name: value" lines with folded continuations (RFC 5322 §2.2.3), first wins."""
    out: dict[str, str] = {}
    last: str | None = None
    for line in block.split("\n"):
        if line[:1] in (" ", "\t") and last is not None:
            out[last] += " " + line.strip()
            continue
        match = _FIELD.match(line)
        if match is None:
            last = None
            continue
        last = match.group(1).lower()
        out.setdefault(last, match.group(2).strip())
    return out


def delivery_report(msg: Message) -> DeliveryReport | None:
    """The recipient groups of the first delivery-status part, or None without one."""
    parts = report_parts(msg, "message/delivery-status", "message/global-delivery-status")
    if not parts:
        return None
    blocks = field_blocks(parts[0])
    if not blocks:
        return DeliveryReport(None, ())
    per_message, recipients = blocks[0], blocks[1:]
    if "final-recipient" in per_message or "original-recipient" in per_message:
        # No per-message group at all (seen in the wild): every group is a recipient.
        per_message, recipients = {}, blocks
    groups = []
    for block in recipients:
        group = _group(block)
        if group is not None:
            groups.append(group)
    reporting = typed_text(per_message.get("reporting-mta")) or None
    return DeliveryReport(reporting, tuple(groups))


def _group(block: dict[str, str]) -> Group | None:
    final = address_in(block.get("final-recipient")) or address_in(block.get("x-actual-recipient"))
    original = address_in(block.get("original-recipient"))
    # The address the message was sent to is the Original-Recipient; the Final-Recipient may
    # be what an alias or a forward rewrote it to (RFC 3464 §2.3.1, §2.3.2).
    rcpt = original or final
    if rcpt is None:
        return None
    diagnostic = typed_text(block.get("diagnostic-code"))
    status_field = block.get("status", "")
    status = enhanced_status(status_field) or enhanced_status(diagnostic)
    action = block.get("action", "").strip().lower().split(" ")[0].strip("();")
    if action.startswith(_FAILED):
        action = "failed"
    elif not action and status_field.strip()[:1] in ("4", "5"):
        # No Action field (seen in the wild): the status class says (RFC 3463 §3.1).
        action = "failed" if status_field.strip()[:1] == "5" else "delayed"
    if status is not None and status.endswith(".0.0"):
        # A generic Status field; the remote reply often has the finer code (RFC 3463 §3.1).
        finer = enhanced_status(diagnostic)
        status = finer if finer and finer[0] == status[0] else status
    return Group(
        rcpt=rcpt,
        original_rcpt=original,
        final_rcpt=final if final and final.lower() != rcpt.lower() else None,
        action=action,
        status=status,
        diagnostic=diagnostic,
        remote_mta=typed_text(block.get("remote-mta")) or None,
    )


def abuse_report(msg: Message) -> AbuseReport | None:
    """An RFC 5965 report: its feedback type, Original-Rcpt-To and the embedded original."""
    parts = report_parts(msg, "message/feedback-report")
    if not parts:
        return _jmrp(msg)
    blocks = field_blocks(parts[0])
    fields = blocks[0] if blocks else {}
    return AbuseReport(
        feedback_type=(fields.get("feedback-type", "").strip().lower() or None),
        original_rcpt=address_in(fields.get("original-rcpt-to")),
        original=original_message(msg),
    )


def _jmrp(msg: Message) -> AbuseReport | None:
    """Microsoft's JMRP complaints (Outlook.com / Hotmail) predate RFC 5965: a multipart/mixed
    with the original attached, whose X-HmXmrOriginalRecipient names the complainer."""
    if msg.get_content_maintype() != "multipart":
        return None
    original = original_message(msg)
    if original is None or original.get("X-HmXmrOriginalRecipient") is None:
        return None
    return AbuseReport(
        feedback_type="abuse",
        original_rcpt=address_in(str(original.get("X-HmXmrOriginalRecipient"))[:1000]),
        original=original,
    )
