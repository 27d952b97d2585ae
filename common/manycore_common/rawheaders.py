"""The header section of an RFC 5322 message as raw bytes: where it ends and its fields (pure).

Used wherever a service reads or edits header fields without the email package (which
re-folds and re-encodes what it touches, and a DKIM-signed message must not change): the
front door's validation (``message.header_section``), the Transformer's edits
(``headers.split_message``) and PostfixLog's (``headers.split_header``).

The one line-ending rule:

* A line ends at LF. RFC 5322 §2.1 writes every line end as CRLF, and CRLF is the form
  signed and sent; a CR right before the LF is part of the line end. A bare LF is a line end
  as well: clients and tools on Unix submit LF-only messages, Postfix's ``postcat`` prints
  stored lines with LF, and both Python's parser and Postfix read a bare LF as a line end, so
  reading it any other way would make us see a different header section than they do.
* A bare CR (one not followed by LF) is not a line end: it stays inside its line. RFC 5322
  §2.3 forbids it outside CRLF, and the Transformer rewrites it to CRLF
  (``normalize_line_endings``) before it signs; until then it is an ordinary byte here.
* The header section ends at the first empty line (RFC 5322 §2.1: "an empty line (i.e., a
  line with nothing preceding the CRLF)"), also when it is the first line. That line is the
  separator; the body is everything after it. A message without an empty line is all header
  section, with an empty separator and body.

``split`` never loses or changes a byte: ``header + separator + body == data``; and
``b"".join(fields(header)) == header``.
"""

from __future__ import annotations

CRLF = b"\r\n"


def body_start(data: bytes) -> tuple[int, int]:
    """(where the separator starts, where the body starts); both ``len(data)`` when there is
    no empty line."""
    if data.startswith(b"\n"):
        return 0, 1
    if data.startswith(CRLF):
        return 0, 2
    # An empty line follows a line end: "\n" then "\r\n" (the RFC form) or "\n" (bare LF).
    # Search the second form only up to the first: a CRLF message has no "\n\n" at all, and
    # would otherwise be scanned to its last byte.
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, len(data) if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return len(data), len(data)


def split(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header section with its last line end, the empty line that ends it, body)."""
    end, start = body_start(data)
    return data[:end], data[end:start], data[start:]


def join(header: bytes, separator: bytes, body: bytes) -> bytes:
    """The inverse of ``split``."""
    return header + separator + body


def fields(header: bytes) -> list[bytes]:
    """The header section as whole fields, each with its continuation lines (RFC 5322 §2.2.3:
    a line starting with SP or HTAB continues the field before it) and line ends. A first
    line that starts with whitespace is a field of its own (callers decide if it is valid)."""
    out: list[bytes] = []
    for line in _lines(header):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line
        else:
            out.append(line)
    return out


def _lines(header: bytes) -> list[bytes]:
    """Lines ending at LF only (``bytes.splitlines`` would also end one at a bare CR)."""
    lines = [line + b"\n" for line in header.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]
