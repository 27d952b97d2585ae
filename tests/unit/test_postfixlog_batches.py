"""How the log processor cuts what it read into batches (one Redis round trip reads a batch's
messages, one more runs their scripts): lines in order, none skipped, no queue id twice."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from manycore_postfixlog.follower import Line
from manycore_postfixlog.logparse import parse_line
from manycore_postfixlog.processor import next_batch
from manycore_postfixlog.state import Position

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "postfix"


def lines() -> deque[Line]:
    texts = (FIXTURES / "outcomes.log").read_text().splitlines()
    out: deque[Line] = deque()
    offset = 0
    for text in texts:
        end = offset + len(text) + 1
        out.append(Line(text, Position(1, 2, offset), Position(1, 2, end)))
        offset = end
    return out


def batches(unread: deque[Line], limit: int) -> list[list[Line]]:
    out = []
    while unread:
        batch = next_batch(unread, limit)
        assert batch, "a batch is never empty while lines wait"
        out.append([line for line, _ in batch])
        for _ in batch:
            unread.popleft()
    return out


def test_batches_keep_every_line_in_order_without_a_queue_id_twice() -> None:
    every = list(lines())
    queue_ids = [r.queue_id for r in map(parse_line, (x.text for x in every)) if r is not None]
    assert len(queue_ids) > len(set(queue_ids)) > 1, "the fixture repeats queue ids"
    cut = batches(lines(), 200)
    assert [line for batch in cut for line in batch] == every
    for n, batch in enumerate(cut):
        ids = [r.queue_id for r in (parse_line(x.text) for x in batch) if r is not None]
        assert len(ids) == len(set(ids))
        if n + 1 < len(cut):
            # Cut only where the next line's queue id is already in the batch (or at the limit).
            following = parse_line(cut[n + 1][0].text)
            assert following is not None and following.queue_id in ids


def test_a_batch_holds_at_most_the_limit() -> None:
    cut = batches(lines(), 2)
    assert max(len(b) for b in cut) == 2
    assert [line for batch in cut for line in batch] == list(lines())
