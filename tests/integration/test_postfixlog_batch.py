"""A backlog's items handed to Postfix a batch at a time (``feedbatch``: one write, one
round trip of records): every recipient delivered once with exactly one event, a message for
several recipients item by item as before, and nothing left held."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tests.helpers import wait_for
from tests.integration.postfix_env import INCOMING, Sink, postfixlog_env, wait_quiet

SINGLE = [f"ok-batch{n}@sink.test" for n in range(12)]
MULTI = ["ok-multi1@sink.test", "ok-multi2@sink.test"]


def test_a_backlog_goes_in_batches_and_each_recipient_once(
    tmp_path: Path, flushed: int, sink: Sink
) -> None:
    with postfixlog_env(tmp_path, flushed, sink, **{"smtp-connections": 1}) as env:
        for n, rcpt in enumerate(SINGLE):
            env.push(f"batch{n}", [rcpt])
        env.push("multi", MULTI)
        service = env.start()  # the backlog is there before the feeder's first take
        everyone = [*SINGLE, *MULTI]
        wait_for(lambda: len(env.events()) >= len(everyone), timeout=60, what="every recipient")
        wait_quiet(2)
        events = Counter((e["rcpt"], e["event"]) for e in env.events())
        assert events == Counter({(r, "delivered"): 1 for r in everyone})
        assert all(sink.deliveries(r) == 1 for r in everyone)
        assert env.redis.llen(INCOMING) == 0 and env.held() == 0
        assert service.metric("postfix_emails_to_postfix_total") == len(SINGLE) + 1
        # smtpd's tally at the end of the session: RSET opens each message of a batch.
        service.kill()
        tally = [m for line in env.log_lines() for m in re.findall(r"rset=(\d+)", line)]
        assert tally and sum(int(n) for n in tally) >= 3, tally
