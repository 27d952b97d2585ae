"""The closed feedback loop's pure half: what to send for each corpus entry, how a remote MTA's
report is made from a corpus message, and how the events that come back are scored.

Units of score: a bounce entry is worth one point per expected failed recipient (the event
for that copy's uuid and recipient must have the expected type and category); a delay notice
one point per delayed recipient (right when it gives no event); an auto-reply or a spam report
one point per variant sent (right when its uuid gets that event). Every event must carry the
message's stream id. Forged: any event (other than Postfix's ``delivered``) for a uuid or
recipient we never sent, for a forgery (but an auto-reply that names nobody), or a hard or
unroutable bounce where the entry expects none. IO lives in :mod:`bench.feedback`.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses
from typing import Any

from manycore_common.bounce_rules import permanent_type
from tests.corpus import Entry
from tests.eventschema import problems

#: Where an auto-reply or spam report that names nobody is sent from our side.
ANY_RECIPIENT = "reader@example.net"
#: The X-Stream-Id of every message the loop sends: MxServer's events must carry it.
STREAM_ID = "loop"
#: The address a forgery puts in place of the recipient we mailed.
OTHER_RECIPIENT = "someone-else@example.org"
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")


@dataclass(frozen=True)
class Send:
    """One message through the suite and the report that comes back for each copy.

    ``variant``: "return-path" (the report to each copy's return path), "abuse" (an ARF to the
    abuse address quoting our copy's headers) or "forgery" (the report with the recipient
    replaced, to the real return path: must give no event)."""

    uuid: str
    entry: Entry
    rcpts: tuple[str, ...]
    variant: str = "return-path"


@dataclass
class Tally:
    right: int = 0
    points: int = 0

    def add(self, ok: bool) -> None:
        self.points += 1
        self.right += ok


@dataclass
class Score:
    total: Tally = field(default_factory=Tally)
    per_kind: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    per_mta: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    misses: list[str] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)
    #: Events that break docs/events.schema.json, with why.
    invalid: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.total.right / self.total.points if self.total.points else 0.0


def _valid(address: str) -> bool:
    return _PLAIN_ADDRESS.fullmatch(address) is not None


def header_address(data: bytes, name: str) -> str | None:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    for _, address in getaddresses([str(v) for v in msg.get_all(name, [])]):
        if _valid(address):
            return address.lower()
    return None


def recipients(entry: Entry, anyone: bool = False) -> tuple[str, ...]:
    """Whom our message goes to: the failed recipients of a bounce or delay; the auto-replier
    (its From) or the complainer, so that the report is about a recipient of ours (with
    ``anyone``, an address the report does not name)."""
    if entry.kind in ("bounce", "delayed"):
        return tuple(dict.fromkeys(f.rcpt for f in entry.failures if _valid(f.rcpt)))
    if anyone:
        return (ANY_RECIPIENT,)
    data = entry.path.read_bytes()
    if entry.kind == "autoreply":
        found = header_address(data, "From")
    else:
        found = entry.complainer.lower() if entry.complainer else None
        found = found or header_address(data, "Original-Rcpt-To")
    return (found if found and _valid(found) else ANY_RECIPIENT,)


def sends(
    entries: Iterable[Entry], uuid_of: Any, forgeries: bool = True, anyone: bool = False
) -> list[Send]:
    """Every message the loop sends; ``uuid_of(i)`` gives a fresh uuid."""
    out: list[Send] = []
    for entry in entries:
        rcpts = recipients(entry, anyone)
        if not rcpts:
            continue
        out.append(Send(uuid_of(len(out)), entry, rcpts))
        if entry.kind == "spam-report" and quote_ours(entry.path.read_bytes(), "x@y.z"):
            out.append(Send(uuid_of(len(out)), entry, rcpts, "abuse"))
        if forgeries and entry.kind == "bounce":
            out.append(Send(uuid_of(len(out)), entry, rcpts[:1], "forgery"))
    return out


def replace_address(data: bytes, old: str, new: str) -> bytes:
    """``data`` with every spelling (any case) of ``old`` replaced by ``new``, also inside
    base64 and quoted-printable parts (a forger rewrites what the reader sees, not only the
    raw text), which are then sent as base64."""
    pattern = re.compile(re.escape(old.encode()), flags=re.IGNORECASE)
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    changed = False
    for part in msg.walk():
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if part.is_multipart() or encoding not in ("base64", "quoted-printable"):
            continue
        decoded = part.get_payload(decode=True)
        if isinstance(decoded, bytes) and pattern.search(decoded):
            del part["Content-Transfer-Encoding"]
            part["Content-Transfer-Encoding"] = "base64"
            part.set_payload(base64.encodebytes(pattern.sub(new.encode(), decoded)).decode())
            changed = True
    # In the raw text also across quoted-printable soft line breaks (RFC 2045 §6.7 rule 5),
    # which a part the parser cannot reach (a broken boundary) may still hold.
    raw = rb"(?:=\r?\n)?".join(re.escape(bytes([c])) for c in old.encode())
    out = re.sub(raw, new.encode(), msg.as_bytes() if changed else data, flags=re.IGNORECASE)
    return pattern.sub(new.encode(), out)


_OURS = ("return-path",)


def _quote_headers(text: str, ours: str) -> str:
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and skipping:
            continue
        skipping = line.split(":", 1)[0].strip().lower() in _OURS
        if not skipping:
            kept.append(line)
    return ours + "\r\n".join(kept) + "\r\n"


def quote_ours(data: bytes, return_path: str) -> bytes | None:
    """An ARF report as a provider sends it about our copy: the embedded original (RFC 5965
    §2 part 3, message/rfc822 or text/rfc822-headers) carries our copy's Return-Path (added
    at final delivery, RFC 5321 §4.4; the Message-ID is never proof). None when the report
    embeds no original."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    found = False
    for part in msg.walk():
        kind = part.get_content_type()
        payload = part.get_payload()
        if kind == "message/rfc822" and isinstance(payload, list) and payload:
            inner = payload[0]
            assert isinstance(inner, Message)
            del inner["Return-Path"]
            inner["Return-Path"] = f"<{return_path}>"
            found = True
        elif kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            ours = f"Return-Path: <{return_path}>\r\n"
            del part["Content-Transfer-Encoding"]
            part.set_payload(_quote_headers(text, ours))
            found = True
    return msg.as_bytes() if found else None


def expected_type(permanent: bool, category: str) -> str:
    return permanent_type(category) if permanent else "soft"  # type: ignore[arg-type]


def _label(send: Send) -> str:
    return f"{send.entry.file} [{send.entry.mta}] {send.variant}"


def _score_send(send: Send, found: list[dict[str, Any]], out: Score) -> None:
    entry = send.entry
    by_rcpt = {str(e.get("rcpt") or "").lower(): e for e in found}
    if send.variant == "forgery":
        # An auto-reply to a real return path says only that the message got one (the classifier
        # may take a report for one): forged is an event that names or blames an address.
        blamed = [e for e in found if e.get("type") != "autoreply" or e.get("rcpt")]
        out.forged += [f"{_label(send)}: {e}" for e in blamed]
        return
    if entry.kind in ("bounce", "delayed"):
        wanted = {f.rcpt: f for f in entry.failures if f.rcpt in send.rcpts}
        for rcpt, failure in wanted.items():
            event = by_rcpt.get(rcpt)
            if entry.kind == "delayed":
                ok = event is None
                why = f"{rcpt}: delay gave {event}"
            else:
                want = (
                    expected_type(failure.permanent, failure.category),
                    failure.category,
                    STREAM_ID,
                )
                got = (
                    (event.get("type"), event.get("category"), event.get("streamid"))
                    if event
                    else None
                )
                ok = got == want
                why = f"{rcpt}: expected {want}, got {got}"
            _tally(out, send, ok, why)
        hard_unwanted = [
            e
            for e in found
            if e.get("type") in ("hard", "unroutable")
            and (
                entry.kind == "delayed"
                or not any(
                    f.permanent for f in wanted.values() if f.rcpt == str(e.get("rcpt")).lower()
                )
            )
        ]
        out.forged += [f"{_label(send)}: hard bounce not expected: {e}" for e in hard_unwanted]
        return
    kind = ("bounce", "autoreply") if entry.kind == "autoreply" else ("spam-report", None)
    ok = any((e["event"], e.get("type"), e.get("streamid")) == (*kind, STREAM_ID) for e in found)
    _tally(out, send, ok, f"expected {entry.kind}, got {[e['event'] for e in found]}")


def _tally(out: Score, send: Send, ok: bool, why: str) -> None:
    kind = (
        send.entry.kind if send.variant == "return-path" else f"{send.entry.kind} ({send.variant})"
    )
    for tally in (out.total, out.per_kind[kind], out.per_mta[send.entry.mta]):
        tally.add(ok)
    if not ok:
        out.misses.append(f"{_label(send)}: {why}")


def score(
    sent: Sequence[Send], events: Iterable[dict[str, Any]], replies: dict[str, list[str]]
) -> Score:
    """Score the events that came back; ``replies`` lists the MX's replies per uuid (for the
    misses)."""
    by_uuid = {s.uuid: s for s in sent}
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    out = Score()
    for event in events:
        why = problems(event)
        if why:
            out.invalid.append(f"{event}: {'; '.join(why)}")
        if event.get("event") == "delivered":
            continue
        send = by_uuid.get(str(event.get("uuid")))
        rcpt = str(event.get("rcpt") or "").lower()
        if send is None or (rcpt and rcpt not in send.rcpts):
            out.forged.append(f"event for a uuid/rcpt we never sent: {event}")
            continue
        found[send.uuid].append(event)
    for send in sent:
        before = len(out.misses)
        _score_send(send, found[send.uuid], out)
        if len(out.misses) > before:
            out.misses[-1] += f"  (MX: {'; '.join(replies.get(send.uuid, []))})"
    return out


def report(out: Score, forgeries_accepted: Sequence[str]) -> str:
    mtas = len(out.per_mta)
    lines = [
        f"right: {out.total.right}/{out.total.points} = {out.accuracy:.1%} ({mtas} MTAs); "
        f"forged events: {len(out.forged)}; made-up addresses accepted at RCPT: "
        f"{len(forgeries_accepted)}; events breaking the schema: {len(out.invalid)}",
        "",
        "per kind:",
    ]
    for kind, t in sorted(out.per_kind.items()):
        lines.append(f"  {t.right / t.points:7.1%}  {t.right:4}/{t.points:<4} {kind}")
    lines += ["", "per MTA with misses:"]
    for mta, t in sorted(out.per_mta.items(), key=lambda kv: kv[0].lower()):
        if t.right < t.points:
            lines.append(f"  {t.right / t.points:7.1%}  {t.right:4}/{t.points:<4} {mta}")
    lines += ["", "misses:", *(f"  {m}" for m in out.misses)]
    lines += ["", "forged:", *(f"  {f}" for f in out.forged)]
    lines += [f"  accepted at RCPT: {a}" for a in forgeries_accepted]
    lines += ["", "events breaking the schema:", *(f"  {i}" for i in out.invalid)]
    return "\n".join(lines)
