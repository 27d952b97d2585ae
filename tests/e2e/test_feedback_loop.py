"""The closed feedback loop of issue 16 on a fixed spread of the real-report corpus: mail goes
through the whole local stack to the sink MX, real bounces, delay notices, auto-replies and
ARF reports come back to the return path each copy carried (and ARF to the abuse address
quoting our copy), forgeries go to made-up and real return paths; the webhook inbox's events
must be right for at least 95% and none may be forged (bench/feedback.py does the work)."""

from __future__ import annotations

from bench.feedback import run, sample
from bench.feedbackplan import report
from tests.corpus import load

SAMPLE = 60


def test_closed_loop_on_a_sample_of_real_reports() -> None:
    entries = sample(load(), SAMPLE)
    assert len(entries) == SAMPLE
    kinds = {e.kind for e in entries}
    assert kinds == {"bounce", "delayed", "autoreply", "spam-report"}
    assert len({e.mta for e in entries}) >= 30
    found, loop = run(entries, log=lambda _: None)
    text = report(found, loop.accepted_forgeries)
    assert found.total.points >= SAMPLE, text
    assert found.accuracy >= 0.95, text
    assert found.forged == [], text
    assert loop.accepted_forgeries == [], text
    assert found.invalid == [], text
