"""The closed feedback loop (issue 16, "How it will be checked"), run against the whole local
stack: real bounces, delay notices, auto-replies and ARF reports from the corpus
(``tests/fixtures/bounces/corpus``) come back to whatever return path each copy carried, as
the remote MTA would send them, and the webhook inbox's events are scored.

For each corpus entry a message with a fresh X-Uuid goes in through HttpReceiver to the
entry's recipients; once the sink MX has received every copy, the corpus message goes to
MxServer over SMTP with ``MAIL FROM:<>`` and ``RCPT TO:<that copy's return path>``. Spam
reports also go, as a second message, to the abuse address with our copy's Return-Path in
the quoted original. Forgeries: every bounce also goes to a made-up
tagged-looking address (must be refused at RCPT) and, for a third message, to the real
return path with the recipient replaced by another address (must give no event). Scoring:
:mod:`bench.feedbackplan`.

    python -m bench.feedback               # the whole corpus (make bench), about a minute
    python -m bench.feedback --sample 60   # a spread of 60 entries
    python -m bench.feedback --only qmail  # entries whose file name has "qmail"

Also: ``--any-recipient`` (auto-replies and spam reports answer mail sent to an address they
do not name), ``--crlf`` (reports with CRLF line ends; by default the corpus file's bytes as
they are), ``--keep-unclassified DIR``. The report (right %, per kind, per MTA, every miss
with MxServer's replies and the unclassified list's note, every forged event) is printed and
written to ``bench/results/feedback.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import smtplib
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from bench.common import RESULTS
from bench.feedbackplan import (
    OTHER_RECIPIENT,
    STREAM_ID,
    Score,
    Send,
    quote_ours,
    replace_address,
    report,
    score,
    sends,
)
from devstack.stack import redis_login, redis_password
from manycore_common import feedbacktag, item, keyspace
from tests.corpus import Entry, load
from tests.e2e.stack import Stack, stack_dir, wait_until
from tests.helpers import LOOPBACK

CONCURRENCY = 8
#: Kinds every sample holds a few of before the rest is spread over the MTAs.
SAMPLE_KINDS = {"delayed": 6, "autoreply": 6, "spam-report": 6}


def sample(entries: Sequence[Entry], n: int) -> list[Entry]:
    """A fixed spread of ``n`` entries: a few of each rarer kind, then one entry per MTA in
    turn (MTAs in name order, entries in corpus order)."""
    chosen: dict[str, Entry] = {}
    for kind, count in SAMPLE_KINDS.items():
        for e in [e for e in entries if e.kind == kind][:count]:
            chosen.setdefault(e.file, e)
    by_mta: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if e.file not in chosen:
            by_mta[e.mta].append(e)
    queues = [by_mta[m] for m in sorted(by_mta, key=str.lower)]
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                e = queue.pop(0)
                chosen[e.file] = e
    return list(chosen.values())[:n]


def message(send: Send) -> bytes:
    lines = [
        "From: Shop <news@example.com>",
        f"To: {', '.join(send.rcpts)}",
        f"Subject: Closed loop {send.entry.file}",
        f"Date: {formatdate()}",
        f"X-Uuid: {send.uuid}",
        f"X-Stream-Id: {STREAM_ID}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    return ("\r\n".join(lines) + "\r\n\r\nA message the closed loop sends.\r\n").encode()


@dataclass
class Loop:
    stack: Stack
    keys: tuple[bytes, ...]
    abuse: str
    replies: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    accepted_forgeries: list[str] = field(default_factory=list)
    #: Items in MxServer's unclassified list at the end.
    unclassified: int = 0
    #: Send reports with CRLF line ends, as an MTA does (else the corpus file's own bytes).
    crlf: bool = False

    def copies(self) -> dict[tuple[str, str], str]:
        """(uuid, recipient) -> the return path the sink saw on that copy."""
        found = {}
        for r in self.stack.received():
            tag = feedbacktag.read_local_part(self.keys, r["mail_from"].rpartition("@")[0])
            if tag is not None:
                found[(tag.uuid, r["rcpt"].lower())] = r["mail_from"]
        return found

    def smtp(self, rcpt: str, data: bytes, uuid: str, tries: int = 5) -> tuple[int, str]:
        """One report to MxServer as a remote MTA sends it (null sender, RFC 5321 §4.5.5);
        temporary refusals are retried, as an MTA's queue would."""
        for attempt in range(tries):
            with smtplib.SMTP(LOOPBACK, self.stack.base + 5, "sink.test", timeout=60) as s:
                s.ehlo("sink.test")
                s.mail("")
                code, text = s.rcpt(rcpt)
                if code == 250:
                    code, text = s.data(data)
            answer = text.decode("utf-8", "replace")
            if code < 400 or code >= 500 or attempt == tries - 1:
                self.replies[uuid].append(f"{code} {answer}")
                return code, answer
            time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def reports(self, send: Send, copies: dict[tuple[str, str], str]) -> None:
        data = send.entry.path.read_bytes()
        if self.crlf:
            data = crlf(data)
        for rcpt in send.rcpts:
            return_path = copies.get((send.uuid, rcpt))
            if return_path is None:
                self.replies[send.uuid].append(f"no copy for {rcpt} at the sink")
                continue
            if send.variant == "abuse":
                quoted = quote_ours(data, return_path)
                if quoted is not None:
                    self.smtp(self.abuse, quoted, send.uuid)
            elif send.variant == "forgery":
                self.smtp(return_path, replace_address(data, rcpt, OTHER_RECIPIENT), send.uuid)
                made_up = f"b{send.uuid}.{'q' * 26}@{return_path.rpartition('@')[2]}"
                code, answer = self.smtp(made_up, data, send.uuid)
                if code != 550:
                    self.accepted_forgeries.append(f"{made_up}: {code} {answer}")
            else:
                self.smtp(return_path, data, send.uuid)


def crlf(data: bytes) -> bytes:
    """Every line ended with CRLF (RFC 5321 §2.3.8); smtplib sends bytes as they are."""
    return re.sub(rb"\r?\n|\r", b"\r\n", data)


def inbox(stack: Stack) -> list[dict[str, Any]]:
    """Every event of the webhook inbox, as it came (the schema is checked in the score)."""
    url = f"http://{LOOPBACK}:{stack.base + 4}/events"
    with urllib.request.urlopen(url, timeout=10) as response:
        return list(json.loads(response.read()))


def settle(stack: Stack, quiet: float = 8.0, timeout: float = 300.0) -> list[dict[str, Any]]:
    """The inbox's events once no new one came for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        events = inbox(stack)
        if len(events) != last:
            last, since = len(events), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return events
        time.sleep(1)
    return inbox(stack)


def unclassified(stack: Stack) -> list[item.Item]:
    """MxServer's unclassified lists, tagged then untagged (each item's header has the uuid
    and the note)."""
    password = redis_password(stack.workdir, "exporter")  # reads only
    username = redis_login("exporter")[0]
    client = Redis(host=LOOPBACK, port=stack.base, username=username, password=password)
    try:
        ks = keyspace.current()
        raws: list[bytes] = []
        for key in (ks.unclassified(), ks.unclassified_untagged()):
            raws += client.lrange(key, 0, -1)  # type: ignore[arg-type]
        return [item.decode(raw) for raw in raws]
    finally:
        client.close()


def abuse_address(stack: Stack) -> str:
    """An abuse address MxServer takes ARF reports at (``mxserver.abuse``)."""
    customer = stack.workdir / "configs" / "inboxbooster-mailer-customer.yaml"
    abuse = yaml.safe_load(customer.read_text())["mxserver"].get("abuse") or {}
    return str(next(v["to"] for v in abuse.values() if isinstance(v, dict) and "to" in v))


def each(items: Sequence[Any], action: Callable[[Any], Any]) -> None:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for _ in pool.map(action, items):
            pass


def run(
    entries: Sequence[Entry],
    forgeries: bool = True,
    anyone: bool = False,
    log: Any = print,
    line_ends: bool = False,
    keep_dir: Path | None = None,
) -> tuple[Score, Loop]:
    """The whole loop on ``entries``; returns the score and the loop (replies, forgeries)."""
    run_id = os.urandom(3).hex()
    planned = sends(entries, lambda i: f"loop{run_id}-{i}", forgeries, anyone)
    with stack_dir() as root:
        stack = Stack(root / "run", queue_lifetime="60s")
        stack.start()
        abuse = abuse_address(stack)
        try:
            secret = (stack.workdir / "configs" / "feedback-secret").read_text().strip()
            loop = Loop(stack, (secret.encode(),), abuse, crlf=line_ends)
            started = time.monotonic()
            each(planned, lambda s: stack.post(message(s)))
            want = {(s.uuid, r) for s in planned for r in s.rcpts}
            took = time.monotonic() - started
            log(f"sent {len(planned)} messages ({len(want)} copies) in {took:.0f} s")
            wait_until(
                lambda: want <= loop.copies().keys(), 120 + len(want) / 5, "every copy at the sink"
            )
            copies = loop.copies()
            log(f"the sink has every copy after {time.monotonic() - started:.0f} s")
            each(planned, lambda s: loop.reports(s, copies))
            log(f"reports sent after {time.monotonic() - started:.0f} s")
            events = settle(stack)
            log(f"{len(events)} events after {time.monotonic() - started:.0f} s")
            kept = unclassified(stack)
            for found in kept:
                uuid = str(found.header.get("uuid"))
                loop.replies[uuid].append(f"kept: {found.header.get('note')}")
                if keep_dir is not None:
                    keep_dir.mkdir(parents=True, exist_ok=True)
                    (keep_dir / f"{uuid}.eml").write_bytes(found.payload)
            loop.unclassified = len(kept)
        finally:
            stack.stop()
    return score(planned, events, loop.replies), loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feedback")
    parser.add_argument("--sample", type=int, default=0, help="a spread of N entries")
    parser.add_argument("--only", help="entries whose file name contains this")
    parser.add_argument("--no-forgeries", action="store_true")
    parser.add_argument("--crlf", action="store_true", help="reports with CRLF line ends")
    parser.add_argument(
        "--any-recipient",
        action="store_true",
        help="send the messages auto-replies and spam reports answer to an address they "
        "do not name (not to the auto-replier or the complainer)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "feedback.txt", help="also write the report here"
    )
    parser.add_argument("--keep-unclassified", type=Path, help="write what MxServer kept here")
    args = parser.parse_args(argv)
    entries = load()
    if args.only:
        entries = [e for e in entries if args.only in e.file]
    if args.sample:
        entries = sample(entries, args.sample)
    found, loop = run(
        entries,
        not args.no_forgeries,
        args.any_recipient,
        keep_dir=args.keep_unclassified,
        line_ends=args.crlf,
    )
    text = report(found, loop.accepted_forgeries)
    text += f"\n\nMxServer's unclassified list: {loop.unclassified} items"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
