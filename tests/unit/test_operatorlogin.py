"""The operator tools' login (``operatorlogin``): which section they use by default, and what
they say when Redis refuses them (tests/integration/test_operator_tools.py runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from manycore_common import operatorlogin


@pytest.mark.parametrize(
    ("text", "section"),
    [
        ("operator:\n  reliable-queue: {}\nredis: {}\n", "operator"),
        ("redis: {}\n", "redis"),  # as before there was an operator user
        ("operator:\n", "redis"),  # an empty section is no login
        ("[not, a, mapping]\n", "redis"),  # load_config reports it
        ("operator: [\n", "redis"),
    ],
)
def test_default_section(tmp_path: Path, text: str, section: str) -> None:
    path = tmp_path / "customer.yaml"
    path.write_text(text)
    assert operatorlogin.default_section(path) == section
    assert operatorlogin.default_section(tmp_path / "missing.yaml") == "redis"


def test_refusals_are_told_apart_from_other_errors() -> None:
    assert operatorlogin.is_refusal(NoPermissionError("no permissions to run 'lrem'"))
    assert operatorlogin.is_refusal(AuthenticationError("WRONGPASS invalid username-password"))
    assert operatorlogin.is_refusal(ResponseError("NOPERM ... script: x"))
    assert not operatorlogin.is_refusal(ResponseError("WRONGTYPE Operation against a key"))


def test_the_message_names_the_user_and_the_config_keys() -> None:
    exc = NoPermissionError("User mc-exporter has no permissions to run the 'evalsha' command")
    first, hint = operatorlogin.refusal_lines("manycore-queues", "redis", exc)
    assert first.startswith("manycore-queues: Redis refused a command of the redis section's")
    assert "redis.server.users.operator" in hint and "operator.reliable-queue.redis" in hint
    assert "--section operator" in hint
    login = AuthenticationError("WRONGPASS")
    first, hint = operatorlogin.refusal_lines("manycore-suppressions", "operator", login)
    assert "refused the login of the operator section's user" in first
    assert "restarted" in hint and "redis.server.users.operator" in hint
