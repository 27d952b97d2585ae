"""Validation of a customer's message at the front door (Receiver and HttpReceiver).

A pure function of the message bytes: it parses only the header section and answers either
an ``Accepted`` (uuid, priority, stream id, recipients) or raises ``MessageRejected`` carrying
the SMTP reply (code, RFC 3463 enhanced status, text), the HTTP status and a short reason
code for the ``nbr_dropped_emails_total`` metric. Both receivers use it, so a message is
accepted or refused the same way whichever door it came through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

#: X-Uuid becomes the local part of ``bounce-<uuid>@`` and ``unsub-<uuid>@``; RFC 5321
#: §4.5.3.1.1 limits a local part to 64 octets, and "bounce-" takes 7 of them.
MAX_UUID_LENGTH = 57
UUID_RE = re.compile(rf"[a-z0-9]{{1,{MAX_UUID_LENGTH}}}")

#: X-Stream-Id ends up in Feedback-ID (colon separated) and in URL templates, so it is kept to
#: characters that are safe in both.
MAX_STREAM_ID_LENGTH = 100
STREAM_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_STREAM_ID_LENGTH}}}")

# A deliberately plain address check: local@domain, no spaces or angle brackets, a domain
# with at least one character. Full RFC 5321 syntax is Postfix's job; this catches what would
# otherwise only fail hours later as a bounce.
ADDRESS_RE = re.compile(r"[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+")

PRIORITY_HIGH = 0
PRIORITY_DEFAULT = 1


class MessageRejected(Exception):
    """Why a message is refused, in the terms of both protocols."""

    def __init__(
        self, reason: str, smtp_code: int, enhanced: str, text: str, http_status: int = 400
    ) -> None:
        super().__init__(text)
        self.reason = reason
        self.smtp_code = smtp_code
        self.enhanced = enhanced
        self.text = text
        self.http_status = http_status

    @property
    def smtp_reply(self) -> str:
        return f"{self.smtp_code} {self.enhanced} {self.text}"


#: Every reason a receiver can refuse a message for (the metric's label values).
REJECT_REASONS = (
    "too-large",
    "bad-headers",
    "missing-uuid",
    "bad-uuid",
    "bad-priority",
    "bad-stream-id",
    "bad-from",
    "no-recipients",
    "bad-recipient",
    "line-too-long",
)


@dataclass(frozen=True, slots=True)
class Accepted:
    uuid: str
    priority: int
    stream_id: str | None
    from_address: str
    recipients: tuple[str, ...]


def too_large(limit: int) -> MessageRejected:
    # RFC 3463: 5.3.4 "Message too big for system".
    return MessageRejected(
        "too-large", 552, "5.3.4", f"Message too big: the limit is {limit} bytes", 413
    )


def _get_all(headers: Message, name: str) -> list[str]:
    """Values of a header as text. Raw 8-bit values are read as UTF-8 (RFC 6532 allows UTF-8
    in headers with SMTPUTF8); the parser keeps them as surrogate escapes, and compat32's
    get_all() would hand back Header objects with the characters replaced."""
    wanted = name.lower()
    out = []
    for key, value in headers.raw_items():
        if key.lower() == wanted:
            out.append(value.encode("ascii", "surrogateescape").decode("utf-8", "replace"))
    return out


def _single(headers: list[str] | None, name: str) -> str | None:
    if not headers:
        return None
    if len(headers) > 1:
        raise MessageRejected(
            "bad-headers",
            550,
            "5.6.0",
            f"Header {name} appears {len(headers)} times, expected once",
        )
    return headers[0].strip()


def header_section(data: bytes) -> bytes:
    """The header section with the empty line that ends it (RFC 5322 §2.1), without the
    body: the parser would otherwise read the whole body line by line only to skip it."""
    crlf = data.find(b"\r\n\r\n")
    # A bare-LF end can only come first if it is before the CRLF one: search only up to
    # there, or a CRLF message (no "\n\n" in it at all) would be scanned to its last byte.
    lf = data.find(b"\n\n", 0, len(data) if crlf < 0 else crlf + 4)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return data[: lf + 2]
    if crlf >= 0:
        return data[: crlf + 4]
    return data


def validate(data: bytes, max_size: int) -> Accepted:
    """Check a complete message (RFC 5322 bytes) against the front door's rules."""
    if len(data) > max_size:
        raise too_large(max_size)
    headers = BytesHeaderParser(policy=compat32).parsebytes(header_section(data))
    if headers.defects:
        # compat32 records e.g. a header section that never ends or a broken first line.
        defect = headers.defects[0]
        raise MessageRejected(
            "bad-headers", 550, "5.6.0", f"Malformed header section: {defect.__class__.__name__}"
        )

    uuid = _single(_get_all(headers, "X-Uuid"), "X-Uuid")
    if uuid is None or uuid == "":
        raise MessageRejected("missing-uuid", 550, "5.6.0", "Missing X-Uuid header")
    if not UUID_RE.fullmatch(uuid):
        raise MessageRejected(
            "bad-uuid",
            550,
            "5.6.0",
            f"Invalid X-Uuid header: use 1 to {MAX_UUID_LENGTH} characters of a-z and 0-9",
        )

    priority_raw = _single(_get_all(headers, "X-Priority"), "X-Priority")
    if priority_raw is None:
        priority = PRIORITY_DEFAULT
    elif priority_raw in ("0", "1"):
        priority = int(priority_raw)
    else:
        raise MessageRejected(
            "bad-priority", 550, "5.6.0", "Invalid X-Priority header: must be 0 (high) or 1"
        )

    stream_id = _single(_get_all(headers, "X-Stream-Id"), "X-Stream-Id")
    if stream_id is not None and not STREAM_ID_RE.fullmatch(stream_id):
        raise MessageRejected(
            "bad-stream-id",
            550,
            "5.6.0",
            f"Invalid X-Stream-Id header: use 1 to {MAX_STREAM_ID_LENGTH} characters of "
            "A-Z, a-z, 0-9, '.', '_' and '-'",
        )

    from_headers = _get_all(headers, "From")
    from_addresses = _addresses(from_headers)
    if len(from_headers) != 1 or len(from_addresses) != 1 or from_addresses[0] is None:
        # RFC 3463: 5.1.7 "Bad sender's mailbox address syntax".
        raise MessageRejected(
            "bad-from", 550, "5.1.7", "From header must hold exactly one valid address"
        )

    recipients = extract_recipients(_get_all(headers, "To"), _get_all(headers, "Cc"))
    return Accepted(
        uuid=uuid,
        priority=priority,
        stream_id=stream_id,
        from_address=str(from_addresses[0]),
        recipients=recipients,
    )


# RFC 5322 §4.4 (obs-addr-list) allows empty members ("a@x, , b@y"), and §3.4 an empty group
# ("undisclosed-recipients:;"); neither names an address, so both are skipped rather than
# refused. Anything else getaddresses() cannot parse comes back as ('', '') and is refused.
_EMPTY_MEMBER = re.compile(r",\s*(?=,|$)")
_EMPTY_GROUP = re.compile(r'(?:^|(?<=,))\s*[^:,;<>@"]*:\s*;')


def _addresses(values: list[str]) -> list[str | None]:
    """Addresses in header values; None for a member that does not parse."""
    out: list[str | None] = []
    for value in values:
        cleaned = _EMPTY_MEMBER.sub("", _EMPTY_GROUP.sub("", value)).strip(" \t\r\n,")
        if not cleaned:
            continue
        for _, addr in getaddresses([cleaned]):
            out.append(addr if addr and ADDRESS_RE.fullmatch(addr) else None)
    return out


def extract_recipients(to: list[str], cc: list[str]) -> tuple[str, ...]:
    """Addresses of To and Cc, in order, without duplicates (compared case-insensitively)."""
    seen: set[str] = set()
    out: list[str] = []
    for addr in _addresses([*to, *cc]):
        if addr is None:
            # RFC 3463: 5.1.3 "Bad destination mailbox address syntax".
            raise MessageRejected(
                "bad-recipient", 550, "5.1.3", "Invalid recipient address in To or Cc"
            )
        key = addr.lower()
        if key not in seen:
            seen.add(key)
            out.append(addr)
    if not out:
        raise MessageRejected("no-recipients", 550, "5.1.3", "No recipient address in To or Cc")
    return tuple(out)
