from __future__ import annotations

import json

import pytest

from manycore_common import events
from manycore_common import item as item_format


def test_common_fields_and_unique_ids() -> None:
    a = events.new_event(
        "delivered", uuid="u1", streamid="s", timestamp=1700000000.7, ip="192.0.2.1", rcpt="a@b.c"
    )
    b = events.new_event("delivered", uuid="u1")
    assert a["event"] == "delivered" and a["timestamp"] == 1700000000
    assert a["uuid"] == "u1" and a["streamid"] == "s" and a["rcpt"] == "a@b.c"
    assert a["id"] != b["id"] and len(a["id"]) == 32
    assert "streamid" not in b


def test_bounce_type_is_checked() -> None:
    assert events.new_event("bounce", type="hard", reason="550")["type"] == "hard"
    with pytest.raises(ValueError):
        events.new_event("bounce", type="weird")
    with pytest.raises(ValueError):
        events.new_event("opened")  # type: ignore[arg-type]


def test_error_event_carries_service_and_trace() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        event = events.error_event("transformer", "could not sign", uuid="u9", exc=exc)
    assert event["service"] == "transformer" and event["msg"] == "could not sign"
    assert "RuntimeError: boom" in event["stack-trace"]


def test_encoded_event_is_a_queue_item() -> None:
    event = events.new_event("unsubscribe", uuid="u2", streamid="s2")
    decoded = item_format.decode(events.encode_event(event, source="mxserver"))
    assert json.loads(decoded.payload) == event
    assert decoded.uuid == "u2" and decoded.stream_id == "s2"
