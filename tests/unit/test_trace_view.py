"""Pure parts of tracing and ``manycore-queues``' output: trace records, their rendering,
where-now rows, one item, the unclassified list, a requeued dead letter's bytes."""

from __future__ import annotations

import json

from manycore_backdata import batch
from manycore_backdata.tracing import records as webhook_records
from manycore_common import events, queueinspect, queueview, trace
from manycore_common import item as item_format
from manycore_postfixlog import tracing as postfix_tracing


def test_entry_is_compact_json_without_none_fields() -> None:
    raw = trace.entry("injected", "postfixlog", 1764290000.12345, queue_id="4jbsy", refused=None)
    assert raw == b'{"at":1764290000.123,"stage":"injected","by":"postfixlog","queue_id":"4jbsy"}'


def test_render_puts_time_stage_and_service_first_then_sorted_fields() -> None:
    line = trace.render(
        {"at": 0, "stage": "log", "by": "postfixlog", "rcpt": "a@x.org", "outcome": "bounce"}
    )
    assert (
        line
        == "1970-01-01T00:00:00.000+00:00  log          postfixlog  outcome=bounce rcpt=a@x.org"
    )
    assert trace.render({"stage": "?", "raw": "x" * 300}).endswith("x" * 194 + "...")
    assert trace.parse(b"not json") == {"stage": "?", "raw": "not json"}


def test_trace_lines_show_records_where_now_and_what_is_capped() -> None:
    records = [trace.parse(postfix_tracing.injected("Q1", "pod-a", "it1", 1, [], 10.0))]
    rows = [
        {"queue": "P1", "where": "waiting", "read": 5, "capped": False, "items": []},
        {
            "queue": "IN",
            "where": "dead",
            "read": 10,
            "capped": True,
            "items": [{"id": "i9", "enqueued_at": 0}],
        },
    ]
    lines = queueview.trace_lines("abc", records, rows)
    assert lines[0] == "trace of abc: 1 record(s)"
    assert "injected" in lines[1] and "queue_id=Q1" in lines[1] and "instance=pod-a" in lines[1]
    assert "  IN dead: id=i9 enqueued_at=1970-01-01T00:00:00+00:00" in lines
    assert any("only the first items of these lists were read: IN dead" in x for x in lines)
    assert any("no outcome in Postfix's log yet" in x for x in lines)
    empty = queueview.trace_lines("nope", [], rows[:1])
    assert "  in no queue, processing list or dead-letter list" in empty
    assert any("unknown uuid" in x for x in empty)


def test_webhook_records_carry_the_event_and_the_answer() -> None:
    event = events.new_event(
        "bounce", uuid="u1", type="hard", reason="550 " + "x" * 400, rcpt="r@x.org"
    )
    no_uuid = events.new_event("error", service="t", msg="m")
    items = [
        item_format.decode(events.encode_event(e, source="mxserver")) for e in (event, no_uuid)
    ]
    split, malformed = batch.split(items, 0.0)
    assert not malformed
    ((uuid, raw),) = webhook_records(split, "retry", "webhook answered 503: down", 5.0)
    record = json.loads(raw)
    assert uuid == "u1" and record["webhook"] == "retry" and record["source"] == "mxserver"
    assert record["id"] == event["id"] and record["event"] == "bounce" and record["type"] == "hard"
    assert len(record["reason"]) == 300 and record["answer"] == "webhook answered 503: down"
    assert record["happened"] == event["timestamp"] and record["at"] == 5.0


def test_unclassified_rows() -> None:
    raw = item_format.new_item(
        b"x" * 10,
        source="mxserver",
        extra={
            "mail_from": "a@b.c",
            "rcpts": ["p@r.example"],
            "rcpt_count": 12,
            "note": "no rule matched",
            "bytes": 999,
            "truncated": True,
        },
    )
    row = queueview.unclassified_row(3, item_format.decode(raw))
    line = queueview.unclassified_line(row)
    assert line.startswith("#3 ") and "from=<a@b.c> to=p@r.example (+11 more)" in line
    assert "size=999 truncated note='no rule matched'" in line and "uuid=" not in line
    tagged = item_format.new_item(b"x", source="mxserver", uuid="u7", extra={"bytes": 1})
    assert " uuid=u7 " in queueview.unclassified_line(
        queueview.unclassified_row(0, item_format.decode(tagged))
    )


def test_unclassified_heading_names_both_lists() -> None:
    heading = queueview.unclassified_heading("T", 3, False, "U", 7)
    assert heading == "T: 3 tagged message(s), newest first (U: 7, --untagged to list them)"
    assert "1 untagged message(s)" in queueview.unclassified_heading("U", 1, True, "T", 0)


def test_requeued_dead_letter_loses_dead_and_attempts() -> None:
    raw = item_format.encode(
        {"v": 1, "id": "i1", "attempts": 5, "dead": {"reason": "r", "at": 1}}, b"payload"
    )
    back = item_format.decode(queueinspect.requeued(item_format.decode(raw)))
    assert back.header == {"v": 1, "id": "i1", "attempts": 0} and back.payload == b"payload"
    corrupt = queueinspect.decode(b"no header line")
    assert queueinspect.requeued(corrupt) == b"no header line"
    assert queueinspect.letter_id(corrupt).startswith("sha-")
    assert queueinspect.by_id(queueinspect.letter_id(corrupt))(b"no header line")


def test_item_lines_cut_long_payloads() -> None:
    item = item_format.decode(item_format.encode({"id": "i2"}, b"a" * 20))
    lines = queueview.item_lines(item, "Q:dead", limit=5)
    assert lines[0] == "Q:dead id=i2" and "aaaaa" in lines and lines[-1].startswith("--- cut at 5")


def test_transformed_records_say_where_and_when_it_was_queued() -> None:
    raw = item_format.new_item(b"m", source="http", uuid="u7", priority=0)
    held = item_format.decode(raw)
    anonymous = item_format.decode(item_format.new_item(b"m", source="smtp"))
    ((uuid, record),) = trace.transformed(
        [(held, [b"c1", b"c2"]), (anonymous, [b"c"])], "IB-MAIL-QUEUE-P0", 9.0
    )
    data = json.loads(record)
    assert uuid == "u7" and data["stage"] == "transformed" and data["copies"] == 2
    assert data["queue"] == "IB-MAIL-QUEUE-P0" and data["source"] == "http"
    assert data["queued"] == held.header["enqueued_at"] / 1000 and data["item"] == held.id
    assert "attempts" not in data
