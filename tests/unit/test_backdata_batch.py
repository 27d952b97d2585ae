"""BackData's batches: which queue items are events, the POST body, ages."""

from __future__ import annotations

import json

from manycore_backdata import batch
from manycore_common import events
from manycore_common import item as item_format

NOW = 1_700_000_000.0


def queued(payload: bytes, **header: object) -> item_format.Item:
    base: dict[str, object] = {"v": 1, "id": "item1", "enqueued_at": 1_699_999_000_000}
    base.update(header)
    return item_format.decode(item_format.encode(base, payload))


def test_an_event_is_posted_byte_for_byte() -> None:
    raw = events.encode_event(events.new_event("unsubscribe", uuid="u1"), source="test")
    item = item_format.decode(raw)
    result = batch.classify(item, NOW)
    assert isinstance(result, batch.Event)
    assert result.kind == "unsubscribe" and result.body == item.payload


def test_malformed_items_are_named() -> None:
    cases = {
        b"{not json": "malformed event: not JSON",
        b"\xff\xfe{}": "malformed event: not JSON",
        b'{"n": NaN, "event": "x"}': "malformed event: not JSON",
        b"[1, 2]": "malformed event: not a JSON object",
        b'{"id": "a"}': 'malformed event: no "event" field',
        b'{"event": ""}': 'malformed event: no "event" field',
        b'{"event": 5}': 'malformed event: no "event" field',
    }
    for payload, reason in cases.items():
        result = batch.classify(queued(payload), NOW)
        assert isinstance(result, batch.Malformed), payload
        assert result.reason.startswith(reason), (payload, result.reason)
    corrupt = item_format.Item(header={"corrupt": True}, payload=b"x", raw=b"x")
    assert isinstance(batch.classify(corrupt, NOW), batch.Malformed)


def test_an_event_without_id_gets_one_that_is_stable_across_attempts() -> None:
    item = queued(b'{"event": "delivered", "uuid": "u1"}')
    first, again = batch.classify(item, NOW), batch.classify(item, NOW + 60)
    assert isinstance(first, batch.Event) and isinstance(again, batch.Event)
    assert json.loads(first.body)["id"] == "item1" == json.loads(again.body)["id"]


def test_split_keeps_queue_order_and_body_is_a_json_array() -> None:
    items = [
        queued(b'{"event": "delivered", "id": "a"}'),
        queued(b"oops"),
        queued(b'{"event": "bounce", "id": "b", "text": "caf\xc3\xa9"}'),
    ]
    good, bad = batch.split(items, NOW)
    assert [e.kind for e in good] == ["delivered", "bounce"] and len(bad) == 1
    assert json.loads(batch.body(good)) == [
        {"event": "delivered", "id": "a"},
        {"event": "bounce", "id": "b", "text": "café"},
    ]
    assert batch.body([]) == b"[]"


def test_age_counts_from_enqueued_at_then_timestamp_then_now() -> None:
    assert batch.born_at(queued(b""), {}, NOW) == 1_699_999_000.0
    no_header = queued(b"", enqueued_at=None)
    assert batch.born_at(no_header, {"timestamp": 1_699_990_000}, NOW) == 1_699_990_000
    assert batch.born_at(no_header, {"timestamp": "x"}, NOW) == NOW


def test_expired_splits_by_age_in_order() -> None:
    old = batch.classify(queued(b'{"event": "a"}', enqueued_at=int((NOW - 100) * 1000)), NOW)
    young = batch.classify(queued(b'{"event": "b"}', enqueued_at=int((NOW - 10) * 1000)), NOW)
    assert isinstance(old, batch.Event) and isinstance(young, batch.Event)
    assert batch.expired([old, young], NOW, 50) == ([old], [young])
    assert batch.expired([old, young], NOW, 100) == ([old], [young])
    assert batch.expired([old, young], NOW, 1000) == ([], [old, young])


def test_oldest_age() -> None:
    raws = [
        item_format.encode({"v": 1, "enqueued_at": int((NOW - 5) * 1000)}, b"{}"),
        item_format.encode({"v": 1, "enqueued_at": int((NOW - 50) * 1000)}, b"{}"),
        b"not an item",
        None,
    ]
    assert batch.oldest_age(raws, NOW) == 50
    assert batch.oldest_age([None, None], NOW) == 0
