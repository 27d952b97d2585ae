"""The suppression check: every recipient of a batch is looked up before its message is signed.

Recipients on the list of the message's sending domain (its From domain; with
``unsubscribe-scope: stream`` also the list of its domain and stream) are dropped from the
message with a ``suppressed`` event; a message left with no recipient is not sent, only acked.
One script call per batch (``SuppressionStore.lookup``), in the main process: the signing pool
stays pure. It is sent before the batch is signed and its answer read after
(``Checker.send``, ``service.Worker.process``), so the Transformer never waits on Redis for
it; the copies of suppressed recipients are signed meanwhile and then dropped
(``without_dropped``), which costs at most what signing them without a check would.

The events of a batch are pushed before its hand-over and acks, so a crash between the two
repeats them (with new ids) rather than losing them: at least once, as every event.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from manycore_common import events, feedbacktag
from manycore_common import suppression as s
from manycore_common.config import SuppressionSettings
from manycore_common.message import STREAM_ID_RE, UUID_RE
from manycore_common.suppressionlookup import PendingLookup
from manycore_common.suppressionstore import SuppressionStore

from . import identity
from .headers import normalize_line_endings, split_message
from .identity import TransformError
from .metrics import LIST_SIZE, SUPPRESSED, SUPPRESSED_MESSAGES
from .transform import Transformed


class Envelope(NamedTuple):
    """What the check needs of a message, read from its header section only (a tuple: one
    is made per message, and a frozen dataclass took longer to build than to read)."""

    uuid: str
    stream_id: str | None
    from_domain: str
    rcpts: tuple[str, ...]
    #: Each recipient's key on the list (normalised), None for one it cannot hold.
    addresses: tuple[str | None, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The recipients to keep (None: the message is left as it is, e.g. one the Transformer
    will refuse anyway) and the events of those dropped."""

    keep: tuple[str, ...] | None
    events: tuple[dict[str, Any], ...] = ()


#: The three fields the check needs, with their folded lines (RFC 5322 §2.2.3).
_FIELD = re.compile(
    rb"^(from|x-uuid|x-stream-id)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)


def _head(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data[: end + 2] if end >= 0 else data


def envelope(data: bytes, rcpts: Sequence[str] | None) -> Envelope | None:
    """The ids, From domain and distinct recipients, or None when the message is malformed
    (the transform then dead-letters it with its usual reason). Pure.

    The receivers give every item its recipients, so usually only three fields are read,
    with one pattern over the header section (a full parse costs more than the look-up);
    an item without recipients has its header section parsed as the transform does."""
    head = _head(data)
    if not rcpts:
        return _parsed(head)
    found: dict[bytes, list[str]] = {}
    for match in _FIELD.finditer(head):
        raw = match.group(2)
        if b"\n" in raw:
            raw = re.sub(rb"\r?\n", b"", raw)
        value = raw.decode("utf-8", "replace").strip()
        found.setdefault(match.group(1).lower(), []).append(value)
    uuids, streams = found.get(b"x-uuid", []), found.get(b"x-stream-id", [])
    if len(uuids) != 1 or not UUID_RE.fullmatch(uuids[0]) or len(streams) > 1:
        return None
    if streams and not STREAM_ID_RE.fullmatch(streams[0]):
        return None
    domain = identity.from_domain(found.get(b"from", []))
    if domain is None:
        return None
    stream = streams[0] if streams else None
    return Envelope(uuids[0], stream, domain, *_distinct(rcpts))


#: A recipient already in the form the list keys it by (lower-case ASCII, no brackets or
#: blanks, no trailing dot, a domain the list can hold): the usual case, recognised with one
#: pattern, where normalising and checking it would give it back unchanged
#: (tests/unit/test_suppression.py compares the two).
_PLAIN = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(?=[a-z0-9.-]{1,253}\Z)[a-z0-9-]+(?:\.[a-z0-9-]+)*"
)


def _distinct(rcpts: Sequence[str]) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """Each recipient once (as feedbacktag fingerprints them, as the transform does), and
    its key on the list (None: not an address the list can hold)."""
    distinct: dict[str, tuple[str, str | None]] = {}  # normalised → (rcpt, key)
    for rcpt in rcpts:
        if _PLAIN.fullmatch(rcpt):
            distinct.setdefault(rcpt, (rcpt, rcpt))
            continue
        norm = feedbacktag.normalize_address(rcpt)
        if norm not in distinct:
            distinct[norm] = (rcpt, _address(norm, rcpt))
    pairs = distinct.values()
    return tuple(rcpt for rcpt, _ in pairs), tuple(key for _, key in pairs)


def _keyed(distinct: dict[str, str]) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    return tuple(distinct.values()), tuple(_address(n, r) for n, r in distinct.items())


def _parsed(head: bytes) -> Envelope | None:
    try:
        fields, _ = split_message(normalize_line_endings(head + b"\n"))
        index: dict[str, list[Any]] = {}
        for f in fields:
            index.setdefault(f.key, []).append(f)
        uuid, stream_id = identity.ids(index)
        domain = identity.from_domain([f.value for f in index.get("from", ())])
        found, _ = identity.distinct_recipients(None, index, uuid)
    except (ValueError, TransformError):
        return None
    if domain is None:
        return None
    return Envelope(uuid, stream_id, domain, *_keyed(found))


def scopes(env: Envelope, settings: SuppressionSettings) -> list[str]:
    """The lists a recipient of this message is looked up in."""
    domain = _domain(env.from_domain)
    if domain is None:
        return []
    out = [domain]
    if env.stream_id and settings.unsubscribe_scope == "stream":
        out.append(s.scope_of(domain, env.stream_id))
    return out


@functools.lru_cache(maxsize=1024)
def _domain(domain: str) -> str | None:
    try:
        return s.normalize_domain(domain)
    except s.BadAddress:
        return None


def _address(norm: str, rcpt: str) -> str | None:
    """The list's key of ``rcpt``, normalised already as ``norm`` (normalising is most of the
    check's own cost: once per recipient)."""
    if _PLAIN.fullmatch(norm):
        return norm
    try:
        return s.checked(norm, rcpt)
    except s.BadAddress:
        return None


def suppressed_event(env: Envelope, rcpt: str, scope: str, entry: s.Entry) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "rcpt": rcpt,
        "reason": entry.reason,
        "domain": scope.partition("#")[0],
        "source": entry.source or None,
        "source-uuid": entry.uuid or None,
    }
    return events.new_event("suppressed", uuid=env.uuid, streamid=env.stream_id, **fields)


class Checker:
    def __init__(self, store: SuppressionStore, settings: SuppressionSettings) -> None:
        self.store = store
        self.settings = settings

    async def check(self, jobs: Sequence[tuple[bytes, tuple[str, ...] | None]]) -> list[Verdict]:
        """One verdict per (payload, item recipients), with one Redis round trip."""
        return await (await self.send(jobs)).verdicts()

    async def send(self, jobs: Sequence[tuple[bytes, tuple[str, ...] | None]]) -> PendingCheck:
        """``check`` in two steps: the look-up is written to Redis when this returns, and
        ``PendingCheck.verdicts`` reads its answer (the Transformer signs in between)."""
        if not self.settings.enabled:
            return PendingCheck([None] * len(jobs), [], None)
        envs = [envelope(data, rcpts) for data, rcpts in jobs]
        plan: list[tuple[int, str]] = []  # (job, rcpt) per look-up
        queries: list[tuple[str, str]] = []
        for n, env in enumerate(envs):
            if env is None:
                continue
            lists = scopes(env, self.settings)
            for rcpt, address in zip(env.rcpts, env.addresses, strict=True):
                for scope in lists if address else ():
                    assert address is not None
                    plan.append((n, rcpt))
                    queries.append((scope, address))
        return PendingCheck(envs, plan, await self.store.send_lookup(queries))


class PendingCheck:
    """A batch's look-up on its way: ``verdicts`` reads the answer, ``abandon`` gives it up."""

    def __init__(
        self, envs: list[Envelope | None], plan: list[tuple[int, str]], sent: PendingLookup | None
    ) -> None:
        self.envs = envs
        self.plan = plan
        self.sent = sent

    async def verdicts(self) -> list[Verdict]:
        found = await self.sent.found(time.time()) if self.sent is not None else []
        hits: dict[int, dict[str, tuple[str, s.Entry]]] = {}
        for (n, rcpt), hit in zip(self.plan, found, strict=True):
            if hit is not None:
                hits.setdefault(n, {}).setdefault(rcpt, hit)
        return [_verdict(env, hits.get(n, {})) for n, env in enumerate(self.envs)]

    async def abandon(self) -> None:
        if self.sent is not None:
            await self.sent.abandon()


def _verdict(env: Envelope | None, hits: dict[str, tuple[str, s.Entry]]) -> Verdict:
    if env is None or not hits:
        return Verdict(None)
    dropped = []
    for rcpt, (scope, entry) in hits.items():
        SUPPRESSED.labels(entry.reason).inc()
        dropped.append(suppressed_event(env, rcpt, scope, entry))
    keep = tuple(r for r in env.rcpts if r not in hits)
    if not keep:
        SUPPRESSED_MESSAGES.inc()
    return Verdict(keep, tuple(dropped))


def without_dropped(result: Transformed, verdict: Verdict) -> Transformed:
    """``result`` less the copies of the recipients ``verdict`` dropped. The transform made
    one copy per distinct recipient as feedbacktag normalises it, and the check looked up
    the same distinct recipients, perhaps in another of their spellings: both are compared
    normalised."""
    gone = {feedbacktag.normalize_address(e["rcpt"]) for e in verdict.events}
    copies = tuple(c for c in result.copies if feedbacktag.normalize_address(c.rcpt) not in gone)
    return dataclasses.replace(result, copies=copies)


async def refresh_size(store: SuppressionStore) -> None:
    LIST_SIZE.set(await store.size())
