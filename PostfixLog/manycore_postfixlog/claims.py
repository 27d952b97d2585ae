"""Small records of ``state``: a claim on an item and where an injected item is held (the
feeders' side of exactly once, issue 17 item 4), and a position in the log."""

from __future__ import annotations

import json
from dataclasses import dataclass

#: How long a claim lasts by default (``postfixlog.claim-seconds``). It only matters when its
#: holder stalls or dies between the claim and the record (a dead holder delays the item by
#: up to this much); a holder re-claims before injecting once half of it has passed (see
#: ``Claim.fresh``).
CLAIM_SECONDS = 120


@dataclass(frozen=True)
class Held:
    """Where the injected item is held (to ack it in the record's step) and whose claim."""

    claimer: str
    processing_key: str
    raw: bytes


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: ``done`` (already injected somewhere), ``mine``, or held by
    ``holder``. ``at`` is our monotonic clock when the claim was asked for (before Redis set
    its expiry), so ``fresh`` errs on the safe side."""

    status: str
    holder: str | None
    at: float
    #: How long the claim lasts in Redis (seconds).
    lasts: float = CLAIM_SECONDS

    def fresh(self, now: float) -> bool:
        """Still ours with a wide margin: a holder that stalled longer than half the claim
        (its claim may have expired and been taken) claims again before it injects."""
        return self.status == "mine" and now - self.at < self.lasts / 2


@dataclass(frozen=True)
class Position:
    """A byte offset in one file (device and inode name the file across renames)."""

    dev: int
    ino: int
    offset: int

    def encode(self) -> str:
        return json.dumps({"dev": self.dev, "ino": self.ino, "offset": self.offset})

    @classmethod
    def decode(cls, raw: bytes | str) -> Position:
        data = json.loads(raw)
        return cls(int(data["dev"]), int(data["ino"]), int(data["offset"]))
