"""What the Transformer reads from the customer's header section before it changes anything
(pure): X-Uuid and X-Stream-Id (as the front doors accept them), the From domain and the
distinct recipients. The suppression check (``suppress``) reads them with the same functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.utils import getaddresses

from manycore_common import feedbacktag
from manycore_common.message import (
    STREAM_ID_RE,
    UUID_RE,
    UUID_RULE,
    MessageRejected,
    extract_recipients,
)

from .headers import Field


class TransformError(Exception):
    """The message cannot be transformed; it goes to the dead-letter list with this reason."""

    def __init__(self, reason: str, text: str, uuid: str | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.uuid = uuid


def _single(index: dict[str, list[Field]], name: str, uuid: str | None = None) -> str | None:
    found = index.get(name.lower())
    if not found:
        return None
    if len(found) > 1:
        raise TransformError("bad-headers", f"header {name} appears {len(found)} times", uuid)
    return found[0].value


# The common forms of From: "Name <local@domain>" or a bare "local@domain".
_SIMPLE_FROM = re.compile(r'(?:[^<>",@;:]*<)?\s*[^\s<>",@;:()]+@([^\s<>",@;:()]+)\s*>?\s*')


def from_domain(from_values: list[str]) -> str | None:
    """The domain of the single From address (lower case), or None."""
    if len(from_values) != 1:
        return None
    simple = _SIMPLE_FROM.fullmatch(from_values[0])
    if simple:
        return simple.group(1).lower()
    senders = [addr for _, addr in getaddresses(from_values) if "@" in addr]
    if len(senders) != 1:
        return None
    return senders[0].rpartition("@")[2].strip().lower() or None


def ids(index: dict[str, list[Field]]) -> tuple[str, str | None]:
    """(X-Uuid, X-Stream-Id), as the front doors accept them."""
    uuid = _single(index, "X-Uuid")
    if uuid is None or not UUID_RE.fullmatch(uuid):
        raise TransformError("bad-uuid", f"missing or malformed X-Uuid ({UUID_RULE})")
    stream_id = _single(index, "X-Stream-Id", uuid)
    if stream_id is not None and not STREAM_ID_RE.fullmatch(stream_id):
        raise TransformError("bad-stream-id", "malformed X-Stream-Id", uuid)
    return uuid, stream_id


def distinct_recipients(
    rcpts: Sequence[str] | None, index: dict[str, list[Field]], uuid: str
) -> tuple[dict[str, str], bool]:
    """The recipients the receiver determined, or (for an item that bypassed the receivers)
    the To and Cc of the message itself; each once, as feedbacktag fingerprints them (two
    spellings of one address would get the same tag): normalised form → the first spelling,
    in the order given (normalised once here, used again to mint the copy's tags). True
    when taken from the headers."""
    from_headers = not rcpts
    if from_headers:
        try:
            rcpts = extract_recipients(
                [f.value for f in index.get("to", ())], [f.value for f in index.get("cc", ())]
            )
        except MessageRejected as exc:
            raise TransformError("bad-recipients", exc.text, uuid) from None
    out: dict[str, str] = {}
    for rcpt in rcpts or ():
        out.setdefault(feedbacktag.normalize_address(rcpt), rcpt)
    return out, from_headers
