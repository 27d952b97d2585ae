"""A stop's hand-back: the queue-file envelope Postfix prints, the queue item made of it, and
when a stop hands back at all (``queue-on-stop``)."""

from __future__ import annotations

from manycore_common import feedbacktag
from manycore_common import item as item_format
from manycore_postfixlog.requeue import handback_item, hands_back, parse_envelope
from manycore_postfixlog.state import Message

ENVELOPE = """\
*** ENVELOPE RECORDS deferred/B/4jbsS65ZY9zJLxR ***
message_size:             277             943               4               2             277
named_attribute: log_ident=4jbsS65ZY9zJLxR
sender: bounce-u1@rp.example
named_attribute: notify_flags=1
original_recipient: ok3@sink.test
done_recipient: ok3@sink.test
original_recipient: later2@sink.test
recipient: later2@sink.test
original_recipient: x@refused.test
recipient: x@refused.test
*** MESSAGE CONTENTS deferred/B/4jbsS65ZY9zJLxR ***
"""


def test_envelope_gives_sender_and_only_recipients_not_done() -> None:
    assert parse_envelope(ENVELOPE) == (
        "bounce-u1@rp.example",
        ["later2@sink.test", "x@refused.test"],
    )


def test_handback_item_looks_like_the_transformers() -> None:
    stored = (
        b"Received: from localhost (localhost [127.0.0.1])\n"
        b"\tby mx (Postfix) with ESMTP id 4jbsS65ZY9zJLxR;\n\tSat, 28 Nov 2026 01:01:42 +0000\n"
        b"DKIM-Signature: v=1; b=abc\nFrom: a@example.com\n\nbody\n"
    )
    msg = Message("u1", "s1", "example.com", "bounce-u1@rp.example", ("a@x", "b@y"))
    raw = handback_item("4jbsS65ZY9zJLxR", stored, "bounce-u1@rp.example", ["b@y"], msg)
    item = item_format.decode(raw)
    assert (item.uuid, item.stream_id, item.header["rcpts"]) == ("u1", "s1", ["b@y"])
    assert item.header["return_path"] == "bounce-u1@rp.example"
    assert item.header["from_domain"] == "example.com"
    assert item.payload == (
        b"DKIM-Signature: v=1; b=abc\r\nX-ReturnPathIb: bounce-u1@rp.example\r\n"
        b"From: a@example.com\r\n\r\nbody\r\n"
    )
    # Without state (it expired), the uuid still comes from the return path.
    item = item_format.decode(handback_item("Q", stored, "bounce-zz9@rp.example", ["b@y"], None))
    assert item.uuid == "zz9" and "stream_id" not in item.header
    uuid = "9f1c2e4a-0b7d-4c3e-8a1f-2d3e4f5a6b7c"
    tagged = feedbacktag.make_address(b"k" * 32, "bounce", uuid, "b@y", "rp.example", "s1")
    item = item_format.decode(handback_item("Q", stored, tagged, ["b@y"], None))
    assert item.uuid == uuid and item.header["return_path"] == tagged


def test_a_stop_hands_back_unless_keep_without_the_marker() -> None:
    assert hands_back("hand-back", False) and hands_back("hand-back", True)
    assert hands_back("keep", True)
    assert not hands_back("keep", False)
