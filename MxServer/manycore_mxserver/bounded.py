"""A message parsed and flattened with a bounded amount of work, whatever its size or shape
(issue #16 item 3): everything after it (our own rules and flufl.bounce's line patterns) reads
only what is left here.

- Only the first ``scan_bytes`` are parsed: the report comes first, the returned original
  last (RFC 3464 §2, RFC 6522), so cutting it costs nothing but the original's tail.
- The standard library's MIME parser recurses per nesting level and checks every line against
  every open boundary: the input is cut before the ``MAX_BOUNDARIES``-th boundary parameter and
  the ``MAX_EMBEDDED``-th embedded message, which bounds both the depth and that product.
- Parts are walked iteratively, at most ``MAX_PARTS`` of them; the rest are pruned.
- Every leaf is decoded once to text and *flattened*: lines folded at ``MAX_LINE``, blank runs
  and non-blank runs shortened, and a ``<`` with no ``>`` after it on its line blanked. Line-based
  patterns with nested or ambiguous quantifiers (some of flufl.bounce's legacy detectors) are
  quadratic or cubic in the length of a line or a run; after this every line and run is short,
  so each such pattern costs a constant per line. Binary leaves become empty.
- Header fields longer than ``MAX_HEADER`` are cut (address-list parsing is super-linear),
  and 8-bit octets in them decoded.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from html import unescape

MAX_BOUNDARIES = 32
MAX_EMBEDDED = 8
MAX_PARTS = 128
MAX_LINE = 500
MAX_RUN = 320  # longer than any address (RFC 5321 §4.5.3.1: 64 + 1 + 255)
#: A run without "@" is no address: a longer one only feeds backtracking.
MAX_WORD = 64
MAX_BLANKS = 16
#: Lines of text kept over all leaves (flufl.bounce runs ~40 patterns over every line).
MAX_LINES = 2000
MAX_HEADER = 8192

RAW_LINE = 2048  # Postfix folds past line_length_limit 2048 as well
_BOUNDARY = re.compile(rb"boundary\s{0,8}=", re.IGNORECASE)
_EMBEDDED = re.compile(rb"content-type:\s{0,8}message/(?:rfc822|global)\b", re.IGNORECASE)
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{MAX_RUN + 1},}}")
_LONG_WORD = re.compile(rf"(?<![^\s@])[^\s@]{{{MAX_WORD + 1},}}")
_BLANK_LINES = re.compile(r"\n(?:[ \t]{0,16}\n){2,}")
_BLANKS = re.compile(rf"[ \t\f\v]{{{MAX_BLANKS + 1},}}")
_NEWLINES = re.compile(r"\r\n?")
_SURROGATES = re.compile("[\udc80-\udcff]")
_SCRIPT = re.compile(r"<(style|script)\b[^<>]{0,500}>[^<]{0,100000}</\1\s{0,4}>", re.IGNORECASE)
_BLOCK_END = re.compile(r"<(?:br|/p|/div|/tr|/li|/h\d|/table)\b[^<>]{0,500}>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]{0,2000}>")


@dataclass(frozen=True)
class Leaf:
    part: Message
    #: The flattened text of the part (empty for binary parts).
    text: str
    #: Inside an embedded message (message/rfc822): the returned original, not the report.
    embedded: bool


def _cut_before(data: bytes, pattern: re.Pattern[bytes], n: int) -> bytes:
    """``data`` up to the n-th match of ``pattern`` (all of it when there are fewer)."""
    for count, match in enumerate(pattern.finditer(data), 1):
        if count >= n:
            return data[: data.rfind(b"\n", 0, match.start()) + 1]
    return data


def _fold_raw(data: bytes) -> bytes:
    """Lines longer than RAW_LINE octets folded (a plain loop: a regex for this retries at
    every offset of every shorter line)."""
    if all(len(line) <= RAW_LINE for line in data.split(b"\n")):
        return data
    out: list[bytes] = []
    for line in data.split(b"\n"):
        out.extend(line[i : i + RAW_LINE] for i in range(0, max(len(line), 1), RAW_LINE))
    return b"\n".join(out)


def parse(data: bytes, scan_bytes: int) -> Message:
    """The first ``scan_bytes`` of ``data`` as a message, cut and flattened as above.

    RecursionError cannot escape for the cut input, but callers still treat it as "keep
    for an operator"."""
    head = data[:scan_bytes]
    head = _fold_raw(head)
    head = _cut_before(head, _BOUNDARY, MAX_BOUNDARIES)
    head = _cut_before(head, _EMBEDDED, MAX_EMBEDDED)
    msg = email.message_from_bytes(head, policy=email.policy.compat32)
    _prune(msg)
    for part in _walk(msg):
        _clean_headers(part)
    return msg


def children(part: Message) -> list[Message]:
    """The sub-parts of a part. Only a multipart's payload is read as is: reading a leaf's
    undecoded payload makes the standard library decode 8-bit octets with the part's charset
    parameter, which raises for a charset with a NUL in it."""
    if not part.is_multipart():
        return []
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _walk(msg: Message) -> Iterator[Message]:
    """Every part, depth first, iteratively (the tree is already pruned to MAX_PARTS)."""
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        payload = children(part)
        if payload:
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _prune(msg: Message) -> None:
    """Drop the parts after the first MAX_PARTS (in document order)."""
    budget = MAX_PARTS
    stack = [msg]
    while stack:
        part = stack.pop()
        budget -= 1
        payload = children(part)
        if not payload:
            continue
        keep: list[Message[str, str] | str] = [p for p in payload if isinstance(p, Message)]
        keep = keep[: max(budget, 0)]
        if len(keep) != len(payload):
            part.set_payload(keep)
        stack.extend(p for p in reversed(keep) if isinstance(p, Message))


def _clean_headers(part: Message) -> None:
    """Header fields cut to MAX_HEADER, and raw 8-bit octets (RFC 6532, or just broken)
    decoded as UTF-8: the standard library otherwise hands them out as Header objects, on
    which string code (flufl.bounce's detectors among it) fails."""
    items = list(part.raw_items())
    if all(len(str(v)) <= MAX_HEADER and not _SURROGATES.search(str(v)) for _, v in items):
        return
    for name, _ in items:
        del part[name]
    for name, value in items:
        text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        part[name] = text[:MAX_HEADER]


def flatten(text: str, max_lines: int = MAX_LINES) -> str:
    """Short lines, short runs, no dangling ``<``: what line patterns may read (see above)."""
    text = _NEWLINES.sub("\n", text)
    text = _BLANKS.sub(" " * MAX_BLANKS, text)
    text = _LONG_WORD.sub(lambda m: m.group(0)[:MAX_WORD], text)
    text = _LONG_RUN.sub(lambda m: m.group(0)[:MAX_RUN], text)
    text = _BLANK_LINES.sub("\n\n", text)
    lines = []
    for line in text.split("\n"):
        while len(line) > MAX_LINE:
            lines.append(_close_brackets(line[:MAX_LINE]))
            line = line[MAX_LINE:]
        lines.append(_close_brackets(line))
        if len(lines) >= max_lines:
            break
    return "\n".join(lines[:max_lines])


def _close_brackets(line: str) -> str:
    last = line.rfind(">")
    if line.find("<", last + 1) < 0:
        return line
    return line[: last + 1] + line[last + 1 :].replace("<", "")


def decoded_text(part: Message) -> str:
    """The text of a leaf: transfer encoding and charset undone, errors replaced."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except (LookupError, ValueError):
        return payload.decode("utf-8", "replace")


def html_to_text(html: str) -> str:
    """Text of an HTML-only report (some providers send no text/plain): tags out, entities
    decoded, block ends as line breaks. Linear: tags are matched without nesting."""
    html = _SCRIPT.sub(" ", html)
    html = _BLOCK_END.sub("\n", html)
    return unescape(_TAG.sub(" ", html))


def leaves(msg: Message) -> list[Leaf]:
    """Every leaf, flattened *in place* (flufl.bounce then reads the flattened text too)."""
    out: list[Leaf] = []
    budget = MAX_LINES
    stack: list[tuple[Message, bool]] = [(msg, False)]
    while stack:
        part, embedded = stack.pop()
        payload = children(part)
        if part.is_multipart():
            inner = embedded or part.get_content_type() in ("message/rfc822", "message/global")
            kids = [p for p in payload if isinstance(p, Message)]
            stack.extend((p, inner) for p in reversed(kids))
            continue
        maintype = part.get_content_maintype()
        # A multipart whose boundary never occurs (seen in the wild) is its text.
        readable = maintype in ("text", "message", "multipart")
        text = decoded_text(part) if readable else ""
        if part.get_content_subtype() == "html":
            text = html_to_text(text)
        text = flatten(text, budget) if budget > 0 else ""
        budget -= text.count("\n") + 1
        del part["Content-Transfer-Encoding"]
        part.set_payload(text)
        out.append(Leaf(part, text, embedded))
    return out
