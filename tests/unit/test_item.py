from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manycore_common import item as item_format


@given(st.binary(max_size=5000), st.text(max_size=50))
def test_round_trip_keeps_payload_exact(payload: bytes, stream_id: str) -> None:
    raw = item_format.new_item(
        payload, source="t", uuid="u1", stream_id=stream_id, priority=0, rcpts=["a@b.c"]
    )
    decoded = item_format.decode(raw)
    assert decoded.payload == payload
    assert decoded.raw == raw
    assert decoded.uuid == "u1" and decoded.stream_id == stream_id
    assert decoded.header["rcpts"] == ["a@b.c"]
    assert decoded.attempts == 0


def test_header_is_one_ascii_line() -> None:
    raw = item_format.new_item(b"x", source="t", stream_id="\u00e5\n\u2028")
    line, _, _ = raw.partition(b"\n")
    assert json.loads(line)["stream_id"] == "\u00e5\n\u2028"
    line.decode("ascii")


def test_none_fields_are_left_out() -> None:
    header = item_format.decode(item_format.new_item(b"x", source="t")).header
    assert "uuid" not in header and "stream_id" not in header


@pytest.mark.parametrize("raw", [b"no newline", b"[1,2]\npayload", b"{bad json\npayload"])
def test_not_an_item(raw: bytes) -> None:
    with pytest.raises(item_format.ItemFormatError):
        item_format.decode(raw)


def test_lua_empty_array_is_normalised() -> None:
    assert item_format.decode(b'{"v":1,"rcpts":{}}\nx').header["rcpts"] == []


@pytest.mark.parametrize(
    "header",
    [{"n": 10**15}, {"f": 1.5}, {"nested": {"x": 2**60}}, {"l": [1, []]}],
)
def test_values_cjson_cannot_keep_are_refused(header: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        item_format.encode(header, b"x")


def test_empty_list_is_left_out() -> None:
    assert "rcpts" not in item_format.decode(item_format.encode({"rcpts": []}, b"x")).header
