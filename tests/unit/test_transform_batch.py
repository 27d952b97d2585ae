"""``transform_batch``: a message that trips a bug is dead-lettered alone, not the batch."""

from __future__ import annotations

from typing import Any

import pytest

from manycore_transformer import batch
from manycore_transformer.identity import TransformError


def test_an_unexpected_exception_is_an_internal_error_of_that_message_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def transform(payload: bytes, settings: Any, now: float, rcpts: Any) -> str:
        if payload == b"poison":
            raise UnicodeDecodeError("utf-8", payload, 0, 1, "invalid start byte")
        if payload == b"refused":
            raise TransformError("bad-from", "no From")
        return "done"

    monkeypatch.setattr(batch, "transform", transform)
    jobs = [(b"first", None), (b"poison", None), (b"refused", None), (b"last", None)]
    out = batch.transform_batch(jobs, 0.0, settings=object())  # type: ignore[arg-type]
    assert [status for status, _ in out] == ["ok", "error", "error", "ok"]
    internal = out[1][1]
    assert internal.reason == "internal-error"
    assert internal.text.startswith("internal error: UnicodeDecodeError: ")
    assert out[2][1].reason == "bad-from"


def test_the_internal_error_text_is_bounded() -> None:
    error = batch.internal_error(ValueError("x" * 10_000))
    assert len(error.text) == 300
