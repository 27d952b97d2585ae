"""The pure half of the closed feedback loop (bench/feedbackplan.py): its forgeries must really
hide the recipient from what MxServer reads, its ARF variant must really quote our copy, and
its score must count what it claims to."""

from __future__ import annotations

import re

from bench.feedbackplan import Send, quote_ours, replace_address, score
from devstack.sink import arf
from manycore_common import feedbacktag
from manycore_mxserver.authenticate import prefix_text
from tests.corpus import CORPUS, Entry, Expected, load

KEY = b"unit-test-feedback-key-0123456789abcdef"
RP_DOMAIN = "bounce.example.com"


def test_a_forgery_leaves_the_recipient_nowhere_mxserver_looks() -> None:
    # Base64 text (Barracuda) and quoted-printable split across soft line breaks in a part the
    # parser cannot reach (Office 365's broken boundary).
    for name, rcpt in [
        ("sisimai/lhost-barracuda-01.eml", "kijitora@example.org"),
        ("sisimai/lhost-office365-09.eml", "azumakuniyuki@example.ne.jp"),
    ]:
        data = (CORPUS / name).read_bytes()
        assert re.search(re.escape(rcpt), prefix_text(data, 262144), re.IGNORECASE), name
        forged = replace_address(data, rcpt, "someone-else@example.org")
        text = prefix_text(forged, 262144)
        assert not re.search(re.escape(rcpt), text, re.IGNORECASE), name
        assert "someone-else@example.org" in text


def test_the_abuse_variant_quotes_our_copy() -> None:
    ours = feedbacktag.make_address(KEY, "bounce", "u1", "ann@x.example", RP_DOMAIN)
    # message/rfc822 (a corpus report) and text/rfc822-headers (the sink's own ARF).
    corpus_arf = (CORPUS / "sisimai/arf-01.eml").read_bytes()
    sink_arf = arf("ann@x.example", "old@bounce.example.com", b"Subject: hi\r\n\r\nx", "isp")
    for report in (corpus_arf, sink_arf):
        quoted = quote_ours(report, ours)
        assert quoted is not None
        (tag,) = feedbacktag.find_tags([KEY], quoted.decode("latin-1"), [RP_DOMAIN])
        assert (tag.uuid, tag.names("ann@x.example")) == ("u1", True)
    assert quote_ours((CORPUS / "sisimai/arf-12.eml").read_bytes(), ours) is None


def _entry(kind: str, *failures: Expected) -> Entry:
    return Entry(file="x.eml", mta="X", kind=kind, failures=failures)


def test_the_score_counts_right_missing_and_forged_events() -> None:
    hard = Expected("a@x.example", True, "invalid-recipient")
    sent = [
        Send("u1", _entry("bounce", hard), ("a@x.example",)),
        Send("u2", _entry("delayed", Expected("b@x.example", False, "other")), ("b@x.example",)),
        Send("u3", _entry("bounce", hard), ("a@x.example",), "forgery"),
        Send("u4", _entry("autoreply"), ("c@x.example",)),
    ]
    common = {"id": "i", "timestamp": 1, "streamid": "loop", "reason": "r"}
    events = [
        {"event": "delivered", "uuid": "u1", "rcpt": "a@x.example", **common},
        {**common, "event": "bounce", "uuid": "u1", "rcpt": "A@X.example", "type": "hard"}
        | {"category": "invalid-recipient"},
        {**common, "event": "bounce", "uuid": "u2", "rcpt": "b@x.example", "type": "hard"}
        | {"category": "other"},
        {**common, "event": "bounce", "uuid": "u9", "rcpt": "z@x.example", "type": "soft"}
        | {"category": "other"},
    ]
    found = score(sent, events, {})
    # u1 right; u2 (a delay that gave a hard bounce) and u4 (no auto-reply) wrong.
    assert (found.total.right, found.total.points) == (1, 3)
    assert len(found.forged) == 2  # the hard bounce on a delay, the uuid we never sent
    assert found.invalid == []


def test_every_corpus_entry_has_somebody_to_mail() -> None:
    from bench.feedbackplan import recipients

    assert all(recipients(e) for e in load())
