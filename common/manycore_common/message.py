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
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from . import feedbacktag, rawheaders

#: X-Uuid is part of every tagged feedback address (``feedbacktag``: kind, uuid, ".", a
#: 26-character tag), and RFC 5321 §4.5.3.1.1 limits a local part to 64 octets: 36 characters
#: are left, enough for an RFC 4122 UUID in lower case. Lower-case letters, digits and inner
#: hyphens only, because some mail systems fold the case of the addresses they hand back.
MAX_UUID_LENGTH = feedbacktag.MAX_UUID_LENGTH
UUID_RE = feedbacktag.UUID_RE
#: The rule as a refusal states it (SMTP reply text and HTTP JSON alike).
UUID_RULE = (
    f"use 1 to {MAX_UUID_LENGTH} characters of a-z, 0-9 and '-', not starting or ending "
    "with '-' (a lower-case RFC 4122 UUID fits)"
)

#: X-Stream-Id ends up in Feedback-ID (colon separated) and in URL templates, so it is kept to
#: characters that are safe in both.
MAX_STREAM_ID_LENGTH = 100
STREAM_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_STREAM_ID_LENGTH}}}")

# A deliberately plain address check: local@domain, no spaces or angle brackets, a domain
# with at least one character. Full RFC 5321 syntax is Postfix's job; this catches what would
# otherwise only fail hours later as a bounce.
# Control characters and U+FFFD (what undecodable 8-bit bytes became) are refused here too:
# such an address would be accepted now only to bounce later, or not at all.
_NOT_IN_ADDRESS = r'@\s<>()\[\],;:"\x00-\x1f\x7f\ufffd'
ADDRESS_RE = re.compile(rf"[^{_NOT_IN_ADDRESS}]+@[^{_NOT_IN_ADDRESS}]+")

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


#: The headers validate() reads, by lower-cased name (field names are case-insensitive,
#: RFC 5322 §1.2.2).
_WANTED = ("x-uuid", "x-priority", "x-stream-id", "from", "to", "cc")
_WANTED_BYTES = {name.encode(): name for name in _WANTED}

Fields = dict[str, list[str]]


def _value_text(raw: bytes) -> str:
    """A raw header value as text. 8-bit values are read as UTF-8 (RFC 6532 allows UTF-8 in
    headers with SMTPUTF8), anything undecodable becoming U+FFFD."""
    return raw.decode("utf-8", "replace")


def _fields_stdlib(head: bytes) -> Fields:
    """The wanted headers as the stdlib's compat32 parser reads them: the reference behaviour,
    and the path for every header section that _fields_fast() does not take.

    compat32's get_all() would hand back Header objects with 8-bit characters replaced, so
    the values come from raw_items(), where the parser keeps the bytes as surrogate escapes."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    if headers.defects:
        # compat32 records e.g. a broken first line or a line that is neither a field nor a
        # continuation nor the empty line.
        defect = headers.defects[0]
        raise MessageRejected(
            "bad-headers", 550, "5.6.0", f"Malformed header section: {defect.__class__.__name__}"
        )
    fields: Fields = {}
    for key, value in headers.raw_items():
        name = key.lower()
        if name in _WANTED:
            fields.setdefault(name, []).append(
                _value_text(value.encode("ascii", "surrogateescape"))
            )
    return fields


# One header field: a field-name of printable ASCII other than ":" (RFC 5322 §2.2, §3.6.8),
# the colon, the rest of its line, then any continuation lines (a line that starts with SP or
# HTAB is folded into the field above, RFC 5322 §2.2.3). A line is any bytes but the ASCII
# controls (HTAB allowed) up to CRLF or a bare LF, which the stdlib parser also accepts. A
# lone CR, NUL or other control never matches: such sections go to the stdlib parser.
# Linear: [^...]* cannot hold CR or LF, so a failing line backtracks at most once per byte.
_FIELD = re.compile(
    rb"([!-9;-~]+):((?:[^\x00-\x08\x0a-\x1f\x7f]*\r?\n)(?:[ \t][^\x00-\x08\x0a-\x1f\x7f]*\r?\n)*)"
)


def _fields_fast(head: bytes) -> Fields | None:
    """The wanted headers of a plainly well-formed header section, read in one pass; None when
    the section is anything else, for _fields_stdlib() to answer (and word the error).

    Plainly well-formed: only ``name: value`` lines and their continuations, then the empty
    line. On exactly those sections compat32 records no defect and gives each field the value
    rebuilt here: the text after the colon with leading SP/HTAB removed, continuation lines
    kept with their line breaks, trailing CR/LF removed (Compat32.header_source_parse)."""
    fields: Fields = {}
    pos = 0
    match = _FIELD.match
    while (field := match(head, pos)) is not None:
        pos = field.end()
        name = _WANTED_BYTES.get(field[1].lower())
        if name is not None:
            fields.setdefault(name, []).append(_value_text(field[2].lstrip(b" \t").rstrip(b"\r\n")))
    if head.startswith(b"\n", pos) or head.startswith(b"\r\n", pos):
        # The empty line that ends the section; what follows is body to the parser too.
        return fields
    return None


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
    # ASCII whitespace only, as the Transformer strips the raw bytes: str.strip() would also
    # take away e.g. a no-break space, and the front door would accept an X-Uuid that the
    # Transformer then refuses, after the client was told 250.
    return headers[0].strip(" \t\r\n\x0b\x0c")


def header_section(data: bytes) -> bytes:
    """The header section with the empty line that ends it (``rawheaders``: its line-ending
    rule), without the body: the parser would otherwise read the whole body line by line only
    to skip it. Python's parser also ends the section at that line (and perhaps before it, at
    a line that is not a field), so it reads the same fields from this as from ``data``."""
    return data[: rawheaders.body_start(data)[1]]


def validate(data: bytes, max_size: int) -> Accepted:
    """Check a complete message (RFC 5322 bytes) against the front door's rules."""
    return _validate(data, max_size, fast=True)


def _validate(data: bytes, max_size: int, *, fast: bool) -> Accepted:
    """validate(); with ``fast=False`` only the stdlib parsers are used (the reference the
    fast paths are tested against)."""
    if len(data) > max_size:
        raise too_large(max_size)
    head = header_section(data)
    # The stdlib parser costs more than all the rest of the checks together; most messages
    # take the lean scanner, which gives the same values or declines.
    fields = _fields_fast(head) if fast else None
    if fields is None:
        fields = _fields_stdlib(head)

    uuid = _single(fields.get("x-uuid"), "X-Uuid")
    if uuid is None or uuid == "":
        raise MessageRejected("missing-uuid", 550, "5.6.0", "Missing X-Uuid header")
    if not UUID_RE.fullmatch(uuid):
        raise MessageRejected(
            "bad-uuid",
            550,
            "5.6.0",
            f"Invalid X-Uuid header: {UUID_RULE}",
        )

    priority_raw = _single(fields.get("x-priority"), "X-Priority")
    if priority_raw is None:
        priority = PRIORITY_DEFAULT
    elif priority_raw in ("0", "1"):
        priority = int(priority_raw)
    else:
        raise MessageRejected(
            "bad-priority", 550, "5.6.0", "Invalid X-Priority header: must be 0 (high) or 1"
        )

    stream_id = _single(fields.get("x-stream-id"), "X-Stream-Id")
    if stream_id is not None and not STREAM_ID_RE.fullmatch(stream_id):
        raise MessageRejected(
            "bad-stream-id",
            550,
            "5.6.0",
            f"Invalid X-Stream-Id header: use 1 to {MAX_STREAM_ID_LENGTH} characters of "
            "A-Z, a-z, 0-9, '.', '_' and '-'",
        )

    from_headers = fields.get("from", [])
    from_addresses = _addresses(from_headers, fast=fast)
    if len(from_headers) != 1 or len(from_addresses) != 1 or from_addresses[0] is None:
        # RFC 3463: 5.1.7 "Bad sender's mailbox address syntax".
        raise MessageRejected(
            "bad-from", 550, "5.1.7", "From header must hold exactly one valid address"
        )

    recipients = _recipients(fields.get("to", []), fields.get("cc", []), fast=fast)
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


# The usual shapes of a single mailbox (RFC 5322 §3.4): "local@domain", "<local@domain>",
# "Display Name <local@domain>", '"Quoted Name" <local@domain>'. On a value of exactly this
# shape getaddresses() returns the one address as written, and ADDRESS_RE accepts it:
# - both sides of the "@" exclude whitespace and everything the stdlib's address parser
#   treats specially (RFC 5322 specials but ".", which it keeps as written, and backslash);
# - an unquoted display name holds no specials but ".", and a quoted one no quote, backslash,
#   CR/LF or parenthesis, so the parser reads the name as a phrase that ends at "<";
# - with no ",", ":" or ";" anywhere, the value has no empty member or group to clean and
#   only one member, so the strict getaddresses() of newer Pythons (CVE-2023-27043) agrees.
# Anything else (lists, groups, comments, escapes, domain literals, folded values) takes the
# general path below. Linear: at each character only one branch can match.
_ADDR_SPEC = rf"[^{_NOT_IN_ADDRESS}\\]+@[^{_NOT_IN_ADDRESS}\\]+"
_SIMPLE_MAILBOX = re.compile(
    rf'(?:[^()<>@,:;"\[\]\\\r\n]|"[^"\\\r\n,:;()]*")*<({_ADDR_SPEC})>[ \t]*'
    rf"|[ \t]*({_ADDR_SPEC})[ \t]*"
)


def _addresses(values: list[str], *, fast: bool = True) -> list[str | None]:
    """Addresses in header values; None for a member that does not parse."""
    out: list[str | None] = []
    for value in values:
        if fast and (simple := _SIMPLE_MAILBOX.fullmatch(value)) is not None:
            out.append(simple[1] if simple[1] is not None else simple[2])
            continue
        cleaned = _EMPTY_MEMBER.sub("", _EMPTY_GROUP.sub("", value)).strip(" \t\r\n,")
        if not cleaned:
            continue
        for _, addr in getaddresses([cleaned]):
            out.append(addr if addr and ADDRESS_RE.fullmatch(addr) else None)
    return out


def extract_recipients(to: list[str], cc: list[str]) -> tuple[str, ...]:
    """Addresses of To and Cc, in order, without duplicates (compared case-insensitively)."""
    return _recipients(to, cc, fast=True)


def _recipients(to: list[str], cc: list[str], *, fast: bool) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for addr in _addresses([*to, *cc], fast=fast):
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
