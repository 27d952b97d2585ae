"""Raw header fields of an RFC 5322 message, edited without re-serialising anything else.

The email package would re-fold headers and may rewrite MIME parts; we only ever remove whole
fields and add new ones, so we work on the raw lines and leave every other byte alone.
"""

from __future__ import annotations

import re
from collections.abc import Set

from manycore_common import rawheaders

from .bodycanon import CRLF as CRLF  # re-exported: the one line end of every module here
from .bodycanon import normalize


def normalize_line_endings(data: bytes) -> bytes:
    """Every line ending as CRLF (RFC 5322 §2.1): the form that is signed and sent."""
    return normalize(data)


class Field:
    """One header field. Treated as immutable. A plain slotted class rather than a frozen
    dataclass: every message creates a dozen, and frozen dataclasses are slow to build."""

    __slots__ = ("key", "name", "raw", "relaxed")

    def __init__(self, name: str, raw: bytes, key: str | None = None) -> None:
        self.name = name  # as written
        self.raw = raw  # the whole field: "Name: value\r\n" with any continuation lines
        self.key = key or name.lower()  # for lookups
        #: Its DKIM relaxed form, once computed (``dkim.relaxed_field``): the fields every
        #: recipient's copy shares are canonicalized once per message, not once per copy.
        self.relaxed: bytes | None = None

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Field) and (self.name, self.raw) == (other.name, other.raw)

    def __hash__(self) -> int:
        return hash((self.name, self.raw))

    @property
    def value(self) -> str:
        """Unfolded value (RFC 5322 §2.2.3), as text (8-bit read as UTF-8, RFC 6532)."""
        _, _, value = self.raw.partition(b":")
        unfolded = value.replace(b"\r\n", b"").strip()
        return unfolded.decode("utf-8", "replace")


#: One well-formed field: a name of printable ASCII but the colon (RFC 5322 §3.6.8 ftext),
#: its colon, the rest of its line and its continuation lines (§2.2.3: a line that starts
#: with SP or HTAB). Lines end at LF, as ``rawheaders`` reads them.
_FIELD = re.compile(rb"(([!-9;-~]+):[^\n]*\n(?:[ \t][^\n]*\n)*)")


def split_message(data: bytes) -> tuple[list[Field], bytes]:
    """Header fields and the body (everything after the empty line), split by
    ``rawheaders``; ``data`` uses CRLF (``normalize_line_endings``). A last field without
    its line end gets one; a message with no field at all is malformed (ValueError)."""
    header, _, body = rawheaders.split(data)
    if not header.endswith(CRLF):
        header += CRLF
    # Nearly every header section is a run of well-formed fields: one regular expression
    # pass in C finds them, split out as [gap, field, name, gap, field, name, ..., gap]. A
    # field ends where the next line starts with neither SP nor HTAB, so the fields of a
    # well-formed section are found back to back and every gap is empty. When one is not,
    # the line-by-line reading below decides (and names what is malformed).
    parts = _FIELD.split(header)
    if not any(parts[::3]):
        known = _NAMES.get
        return [
            Field(name_, raw, key)
            for raw, name in zip(parts[1::3], parts[2::3], strict=True)
            for name_, key in (known(name) or _name(name),)
        ], body
    return _fields(header), body


#: A field name's bytes → (the name as text, its lower case): decoded and lowered once,
#: as the messages repeat the same few names. At most _MAX_NAMES, emptied when full.
_NAMES: dict[bytes, tuple[str, str]] = {}
_MAX_NAMES = 1024


def _name(name: bytes) -> tuple[str, str]:
    if len(_NAMES) >= _MAX_NAMES:
        _NAMES.clear()
    text = name.decode("ascii")
    _NAMES[name] = found = (text, text.lower())
    return found


def _fields(header: bytes) -> list[Field]:
    fields: list[Field] = []
    for raw in rawheaders.fields(header):
        line = raw[: raw.find(b"\n")].removesuffix(b"\r")  # the field's first line
        name, colon, _ = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise ValueError(f"malformed header line: {line[:60]!r}")
        fields.append(Field(name.decode("ascii", "replace"), raw))
    return fields


def join_message(fields: list[Field], body: bytes) -> bytes:
    raws = [f.raw for f in fields]
    raws += (CRLF, body)
    return b"".join(raws)


def make_field(name: str, value: str) -> Field:
    """A new field. Callers pass values they built; CR and LF would start a new header."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} value contains a line break")
    return Field(name, f"{name}: {value}\r\n".encode())


def values(fields: list[Field], name: str) -> list[str]:
    key = name.lower()
    return [f.value for f in fields if f.key == key]


def without(fields: list[Field], names: Set[str]) -> list[Field]:
    """Fields whose (case-insensitive) name is not in ``names`` (lower case)."""
    return [f for f in fields if f.key not in names]
