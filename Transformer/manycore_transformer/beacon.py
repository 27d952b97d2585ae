"""Open-tracking beacon: an image tag inserted into every ``text/html`` part.

The MIME tree is walked on the raw bytes (RFC 2046 boundaries), and only HTML parts are
decoded, changed and re-encoded with their own Content-Transfer-Encoding; every other byte of
the message stays as it was. Attached messages (``message/rfc822``) are not entered: they are
someone else's mail.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from dataclasses import dataclass
from email.message import Message

from .headers import CRLF, Field, normalize_line_endings, split_message, values

_BODY_CLOSE = re.compile(rb"</body\s*>", re.IGNORECASE)
# Charsets in which "</body>" is not plain ASCII bytes; we leave such parts alone.
_WIDE_CHARSETS = ("utf-16", "utf-32", "ucs-2", "ucs-4")


def beacon_tag(url: str) -> bytes:
    return (
        f'<img src="{html.escape(url, quote=True)}" width="1" height="1" alt="" '
        'style="border:0;width:1px;height:1px" />'
    ).encode("ascii", "xmlcharrefreplace")


def content_type(fields: list[Field]) -> tuple[str, Message]:
    """The Content-Type (default text/plain, RFC 2045 §5.2) and a Message to read params."""
    msg = Message()
    found = values(fields, "Content-Type")
    if found:
        msg["Content-Type"] = found[0]
    return msg.get_content_type(), msg


def _insert(html_bytes: bytes, tag: bytes) -> bytes:
    matches = list(_BODY_CLOSE.finditer(html_bytes))
    if not matches:
        return html_bytes + tag
    at = matches[-1].start()
    return html_bytes[:at] + tag + html_bytes[at:]


def _encode_base64(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    # RFC 2045 §6.8: lines of at most 76 characters.
    return CRLF.join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


def _html_part(fields: list[Field], body: bytes, tag: bytes, charset: str) -> bytes:
    if charset.lower().startswith(_WIDE_CHARSETS):
        return body
    encodings = values(fields, "Content-Transfer-Encoding")
    cte = encodings[0].strip().lower() if encodings else "7bit"
    # Whatever line ending closed the part stays as it was (inside a multipart the last CRLF
    # belongs to the next delimiter).
    ending = body[len(body.rstrip(b"\r\n")) :]
    if cte == "base64":
        try:
            decoded = base64.b64decode(body, validate=False)
        except binascii.Error:
            return body
        encoded = _encode_base64(_insert(decoded, tag))
    elif cte == "quoted-printable":
        # b2a_qp keeps the decoded text's line breaks; make them CRLF again.
        encoded = normalize_line_endings(binascii.b2a_qp(_insert(binascii.a2b_qp(body), tag)))
    else:
        encoded = _insert(body[: len(body) - len(ending)], tag)
    return encoded.rstrip(b"\r\n") + ending


@dataclass
class _Multipart:
    """A multipart body cut at its delimiter lines, kept as lines so it joins back exactly."""

    chunks: list[list[bytes]]  # preamble, then one list of lines per part
    delimiters: list[bytes]  # the delimiter line before each part, as written
    tail: list[bytes]  # the close-delimiter line and the epilogue

    def join(self, parts: list[list[bytes]]) -> bytes:
        flat = list(self.chunks[0])
        for delimiter, lines in zip(self.delimiters, parts, strict=True):
            flat.append(delimiter)
            flat.extend(lines)
        return CRLF.join(flat + self.tail)


def _split_multipart(body: bytes, boundary: bytes) -> _Multipart | None:
    """None when there is no close delimiter (then we change nothing). A delimiter line is
    ``--boundary`` plus optional whitespace; the CRLF before it belongs to it (RFC 2046
    §5.1.1), which splitting into lines respects."""
    delimiter = b"--" + boundary
    lines = body.split(CRLF)
    multipart = _Multipart(chunks=[[]], delimiters=[], tail=[])
    for index, line in enumerate(lines):
        stripped = line.rstrip(b" \t")
        if stripped == delimiter:
            multipart.delimiters.append(line)
            multipart.chunks.append([])
        elif stripped == delimiter + b"--":
            multipart.tail = lines[index:]
            return multipart if multipart.delimiters else None
        else:
            multipart.chunks[-1].append(line)
    return None


def add_beacon(fields: list[Field], body: bytes, url: str) -> bytes:
    """The body with the beacon in each HTML part (``fields`` are the entity's headers)."""
    return _walk(fields, body, beacon_tag(url), depth=0)


def _walk(fields: list[Field], body: bytes, tag: bytes, depth: int) -> bytes:
    ctype, msg = content_type(fields)
    if ctype == "text/html":
        return _html_part(fields, body, tag, str(msg.get_param("charset") or "us-ascii"))
    if not ctype.startswith("multipart/") or depth > 20:
        return body
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return body
    multipart = _split_multipart(body, boundary.encode("utf-8", "replace"))
    if multipart is None:
        return body
    parts = [_walk_part(lines, tag, depth) for lines in multipart.chunks[1:]]
    return multipart.join(parts)


def _walk_part(lines: list[bytes], tag: bytes, depth: int) -> list[bytes]:
    part = CRLF.join(lines)
    if CRLF + CRLF not in part + CRLF or part.startswith(CRLF):
        return lines  # no body, or no headers (text/plain by default): nothing to change
    try:
        fields, body = split_message(part if CRLF + CRLF in part else part + CRLF)
    except ValueError:
        return lines
    new_body = _walk(fields, body, tag, depth + 1)
    if new_body == body:
        return lines
    return (b"".join(f.raw for f in fields) + CRLF + new_body).split(CRLF)
