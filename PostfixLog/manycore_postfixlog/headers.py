"""The few edits PostfixLog makes to a message's header section, on raw bytes (pure).

Nothing else in the message may change: it is DKIM-signed. ``X-ReturnPathIb`` is not covered
by the signature (the Transformer adds it for us), so removing and re-adding it is safe, and
so is removing the ``Received`` line our own Postfix prepended (RFC 5321 §4.4: each relay
adds one at the top; it is never signed). Where the header section ends and how it is cut
into fields is ``manycore_common.rawheaders``' one rule (CRLF from our queues and LF from
``postcat`` read alike).
"""

from __future__ import annotations

import re

from manycore_common import rawheaders

RETURN_PATH_HEADER = b"x-returnpathib"
#: RFC 5322 §2.2: a field name is printable ASCII except colon, followed by a colon.
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def field_name(field: bytes) -> bytes:
    match = _FIELD_NAME.match(field)
    return match.group(1).lower() if match else b""


def field_value(field: bytes) -> str:
    _, _, value = field.partition(b":")
    return b" ".join(value.split()).decode("utf-8", "replace")


def take_return_path(data: bytes) -> tuple[str | None, bytes]:
    """The first ``X-ReturnPathIb`` value and the message without any such field."""
    header, blank, body = rawheaders.split(data)
    found: str | None = None
    kept = []
    for f in rawheaders.fields(header):
        if field_name(f) == RETURN_PATH_HEADER:
            if found is None:
                found = field_value(f) or None
            continue
        kept.append(f)
    return found, b"".join(kept) + blank + body


def add_return_path(data: bytes, return_path: str) -> bytes:
    """``X-ReturnPathIb`` as the Transformer places it: right after the DKIM signatures."""
    header, blank, body = rawheaders.split(data)
    all_fields = rawheaders.fields(header)
    eol = b"\r\n" if header.endswith(b"\r\n") or not header else b"\n"
    at = 0
    while at < len(all_fields) and field_name(all_fields[at]) == b"dkim-signature":
        at += 1
    new = b"X-ReturnPathIb: " + return_path.encode() + eol
    return b"".join(all_fields[:at]) + new + b"".join(all_fields[at:]) + blank + body


def drop_own_received(data: bytes, queue_id: str) -> bytes:
    """Remove the topmost ``Received`` field when our Postfix wrote it (``id <queue id>``),
    so a message handed back and injected again does not collect one per round trip."""
    header, blank, body = rawheaders.split(data)
    all_fields = rawheaders.fields(header)
    ours = rb"\bid " + re.escape(queue_id.encode()) + rb"\b"
    if all_fields and field_name(all_fields[0]) == b"received" and re.search(ours, all_fields[0]):
        all_fields = all_fields[1:]
    return b"".join(all_fields) + blank + body


def to_crlf(data: bytes) -> bytes:
    """postcat(1) prints stored lines with LF; messages on our queues use CRLF (RFC 5322)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mail_options(sender: str, rcpts: list[str], data: bytes) -> list[str]:
    """MAIL FROM parameters: BODY=8BITMIME for 8-bit content (RFC 6152) and SMTPUTF8 for
    non-ASCII addresses or header fields (RFC 6531 §3.4)."""
    options = []
    if not data.isascii():
        options.append("BODY=8BITMIME")
    header, _, _ = rawheaders.split(data)
    texts = [sender, *rcpts]
    if any(not t.isascii() for t in texts) or not header.isascii():
        options.append("SMTPUTF8")
    return options
