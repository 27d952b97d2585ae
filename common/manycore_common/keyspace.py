"""Every Redis key name the suite uses, built in one place (docs/ARCHITECTURE.md#redis-keys).

No other module formats a key name, and no Lua script builds one: scripts get every key in
KEYS, so Redis (and a Redis Cluster) knows each key a script touches.

Pure, apart from the process's ``current()`` keyspace, which ``use()`` sets once at start from
``reliable-queue.key-prefix`` (``lifecycle.run_service`` and the operator tools do): a
process serves one pipeline.

Hash slots. Redis Cluster puts a key in slot CRC16(tag) mod 16384, where the tag is the text
between the key's first ``{`` and the first ``}`` after it when that text is not empty, else
the whole key (Redis Cluster specification, "Hash tags"). A script may touch keys of one slot
only. So:

* The derived keys of a queue whose list is ``Q`` are ``{Q}:consumers``, ``{Q}:holders``,
  ``{Q}:dead``, ``{Q}:doorbell`` and ``{Q}:processing:<id>``: their tag is ``Q``, which is
  what ``Q`` itself (no braces) hashes as. A ``Q`` that carries a tag already (``{mc}Q``)
  gets ``Q:consumers`` and so on: they inherit its tag. The list name is the configured
  queue name, unchanged.
* ``prefix`` (``reliable-queue.key-prefix``, e.g. ``{mc}``) goes in front of every key, queue
  names included. Then every key of the suite is in the prefix's slot, so every script
  (a hand-over between queues, a push with its idempotency claims, an event with its
  suppression entries) is atomic on a Cluster too. One prefix is one pipeline: the unit a
  deployment scales by (README, "Scaling").

Without a prefix, the keys of one queue share a slot; scripts that span queues or families do
not (fine on one Redis or a Sentinel group, which is what such a deployment runs on).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: The keys every queue has besides its list (``Keyspace.consumers`` ...).
QUEUE_SUFFIXES = ("consumers", "holders", "dead", "doorbell", "processing")

_FEEDBACK_STREAMS = "MANYCORE-FEEDBACK-STREAMS"
_UNCLASSIFIED = "MXSERVER-UNCLASSIFIED"
_UNCLASSIFIED_UNTAGGED = "MXSERVER-UNCLASSIFIED-UNTAGGED"
#: Once-keys of events, by what they say happened (events.emit_once).
_ONCE = {
    "bounce": "bounced",
    "autoreply": "autoreplied",
    "spam-report": "complained",
    "unsubscribe": "unsubscribed",
}


def hash_tag(key: str) -> str | None:
    """The text Redis Cluster hashes instead of the whole key, or None when there is none."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1 : end] if end > start + 1 else None


def slot_text(key: str) -> str:
    """What decides ``key``'s slot: its hash tag, else all of it."""
    tag = hash_tag(key)
    return key if tag is None else tag


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a key prefix, or None: it is empty or starts with a
    non-empty ``{...}`` hash tag (so that it, not the rest of a key, decides the slot)."""
    if not prefix:
        return None
    if not prefix.startswith("{") or hash_tag(prefix) is None:
        return f"must be empty or start with a hash tag such as {{mc}}, got {prefix!r}"
    return None


def queue_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a queue name, or None. A name without a hash tag must not
    contain ``}``: ``{Q}:dead`` would then hash less than all of ``Q``."""
    if not name:
        return "a queue name must not be empty"
    if hash_tag(name) is None and "}" in name:
        return f"queue name {name!r}: without a hash tag such as {{mc}} it must not contain '}}'"
    return None


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The key names of one pipeline; ``prefix`` is ``reliable-queue.key-prefix``."""

    prefix: str = ""

    def __post_init__(self) -> None:
        problem = prefix_problem(self.prefix)
        if problem:
            raise ValueError(f"reliable-queue.key-prefix {problem}")

    # ------------------------------------------------------------------ queues

    def queue(self, name: str) -> str:
        """The list of the configured queue ``name``. Given a list key of this keyspace
        already, returns it unchanged, so that building a queue twice is harmless."""
        if self.prefix and name.startswith(self.prefix):
            return name
        return self.prefix + name

    def _side(self, queue: str, suffix: str) -> str:
        # ``queue`` is a list key (``queue()``): tagged already, or its own tag.
        return f"{queue}:{suffix}" if hash_tag(queue) is not None else f"{{{queue}}}:{suffix}"

    def consumers(self, queue: str) -> str:
        return self._side(queue, "consumers")

    def holders(self, queue: str) -> str:
        return self._side(queue, "holders")

    def dead(self, queue: str) -> str:
        return self._side(queue, "dead")

    def doorbell(self, queue: str) -> str:
        return self._side(queue, "doorbell")

    def processing(self, queue: str, consumer: str) -> str:
        return self._side(queue, f"processing:{consumer}")

    # ------------------------------------------------------------------ other families

    def idempotency(self, digest: str) -> str:
        """A submission's claim (``manycore_common.idempotency``)."""
        return f"{self.prefix}idem:{digest}"

    def trace(self, uuid: str) -> str:
        return f"{self.prefix}trace:{uuid}"

    def suppression_size(self) -> str:
        return f"{self.prefix}supp:size"

    def suppression_bucket(self, scope: str, bucket: int) -> str:
        """One of a scope's 65,536 hashes (``manycore_common.suppression``)."""
        return f"{self.prefix}supp:{scope}:{bucket:04x}"

    def suppression_soft(self, scope: str, bucket: int, address: str) -> str:
        return f"{self.prefix}supp:soft:{scope}:{bucket:04x}:{address}"

    def once(self, kind: str, uuid: str, fingerprint: str | None = None) -> str:
        """The marker that makes an event of ``kind`` happen once per message (and
        recipient, by the feedback tag's ``fingerprint``)."""
        head = f"{self.prefix}{_ONCE[kind]}:{uuid}"
        return head if fingerprint is None else f"{head}:{fingerprint}"

    def untimed_since(self) -> str:
        """Unix time HttpReceiver first saw an unsubscribe token without an issue time."""
        return f"{self.prefix}unsubscribe:untimed-since"

    def feedback_streams(self) -> str:
        """Stream hash → stream id (``manycore_common.feedbacktag``)."""
        return self.prefix + _FEEDBACK_STREAMS

    def unclassified(self) -> str:
        """MxServer's list of mail no rule understood that carries a verified feedback tag
        (it concerns mail we sent)."""
        return self.prefix + _UNCLASSIFIED

    def unclassified_untagged(self) -> str:
        """MxServer's list of mail no rule understood and no tag proves (postmaster@ and
        abuse mail anyone may send): kept apart so it cannot push out the tagged list."""
        return self.prefix + _UNCLASSIFIED_UNTAGGED

    def postfixlog(self, instance: str, what: str) -> str:
        """One PostfixLog instance's keys: ``msg:<queue id>``, ``requeued:<queue id>``,
        ``log-position`` (PostfixLog/manycore_postfixlog/state.py)."""
        return f"{self.prefix}postfixlog:{instance}:{what}"

    def postfixlog_item(self, item_id: str) -> str:
        """The "already in a Postfix" marker of a queue item (any instance)."""
        return f"{self.prefix}postfixlog:item:{item_id}"

    def postfixlog_claim(self, item_id: str) -> str:
        return f"{self.prefix}postfixlog:claim:{item_id}"

    # ------------------------------------------------------------------ upgrades, ACLs

    def acl_patterns(self, queues: Iterable[str]) -> dict[str, list[str]]:
        """Redis ACL key patterns (``~pattern``, ACL LOG glob syntax) per family, for the
        configured queue names ``queues``: what a service's ACL user must be allowed to
        touch. ``legacy`` holds the names of the previous release (``Q:*``), which the
        reaper still reads for one release; drop it after. Glob characters in a name are
        escaped."""
        out: dict[str, list[str]] = {}
        legacy: list[str] = []
        for name in queues:
            key = self.queue(name)
            out[f"queue:{name}"] = [_glob(key), _glob(self._side(key, "")) + "*"]
            legacy.append(_glob(name) + ":*")
            if self.prefix:
                legacy.append(_glob(name))
        p = _glob(self.prefix)
        out["idempotency"] = [p + "idem:*"]
        out["trace"] = [p + "trace:*"]
        out["suppression"] = [p + "supp:*"]
        out["once"] = [p + v + ":*" for v in _ONCE.values()]
        out["untimed-since"] = [_glob(self.untimed_since())]
        out["feedback-streams"] = [_glob(self.feedback_streams())]
        out["unclassified"] = [_glob(self.unclassified())]
        out["unclassified-untagged"] = [_glob(self.unclassified_untagged())]
        out["postfixlog"] = [p + "postfixlog:*"]
        out["legacy"] = legacy
        return out


def legacy_queue_keys(name: str) -> dict[str, str]:
    """The keys of the configured queue ``name`` as the previous release named them (no
    hash tag, no prefix); the reaper moves what it finds there (``ReliableQueue.reap``).
    ``processing`` is the prefix of its processing lists."""
    return {s: f"{name}:{s}" for s in ("consumers", "holders", "dead", "doorbell")} | {
        "queue": name,
        "processing": f"{name}:processing:",
    }


def _glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


_current = Keyspace()


def use(prefix: str) -> Keyspace:
    """Make ``prefix`` this process's keyspace (once, at start, from the global config)."""
    global _current
    _current = Keyspace(prefix)
    return _current


def current() -> Keyspace:
    return _current
