"""Which sending domains a report is about, for the suppression list (pure).

A feedback tag names the message (uuid), the recipient and the stream, not the From domain
(the tag format is fixed: 64 octets are full). What a report does tell is where it was sent:
the return-path domain of the message (the tagged envelope sender, or postmaster@/abuse@ that
domain). The Transformer's ``domain-settings`` give each From domain its return-path domain,
and DMARC's SPF alignment (RFC 7489 §3.1.2) already wants that domain under the From domain's
organisational domain, so in practice a return-path domain belongs to one From domain and the
entry lands exactly where PostfixLog's would. Where several From domains share one return-path
domain the entry goes under each of them (the recipient complained about, or does not exist
for, mail of that shared sender). A report sent to an address at a From domain itself (a
feedback-loop address such as abuse@example.com) goes under that domain; one that reached only
an ``mxserver.extra-domains`` address names neither, and the entry goes under every
configured From domain.
Stateless: no per-message record of the From domain is needed (that would cost Redis memory
per message sent, which the list itself is careful not to).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Senders:
    #: return-path domain → the From domains that use it.
    by_return_path: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Senders:
        """From (From domain, return-path domain) pairs, as in ``transformer.domain-settings``."""
        found: dict[str, set[str]] = {}
        for from_domain, return_path in pairs:
            found.setdefault(return_path.lower().rstrip("."), set()).add(from_domain.lower())
        return cls({k: frozenset(v) for k, v in found.items()})

    def for_rcpts(self, rcpts: Iterable[str]) -> frozenset[str]:
        """The From domains a report sent to ``rcpts`` concerns."""
        domains = {r.rpartition("@")[2].strip(">").rstrip(".").lower() for r in rcpts}
        every: frozenset[str] = frozenset().union(*self.by_return_path.values())
        hits = [self.by_return_path[d] for d in domains if d in self.by_return_path]
        # A feedback-loop address at a From domain itself (abuse@example.com).
        hits += [frozenset({d}) for d in domains if d in every]
        return frozenset().union(*hits) if hits else every
