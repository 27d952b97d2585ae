"""Static checks of the Lua the queue and PostfixLog run (issue 17 items 1 and 5): no script
builds a key name, so every key it touches is in KEYS, where a cluster client can see it."""

from __future__ import annotations

import re

import pytest

from manycore_common import queuescripts
from manycore_postfixlog import statescripts

SCRIPTS = {
    f"{module.__name__}.{name}": value
    for module in (queuescripts, statescripts)
    for name, value in vars(module).items()
    if name.isupper() and isinstance(value, str) and "redis.call" in value
}
#: A key name made by concatenation with a KEYS entry (what the SCAN-era reaper did).
_KEY_CONCAT = re.compile(r"KEYS\[\d+\]\s*\.\.|\.\.\s*KEYS\[\d+\]")


def test_the_scripts_are_found() -> None:
    assert {"manycore_common.queuescripts.REAP", "manycore_common.queuescripts.TAKE_MANY"} <= set(
        SCRIPTS
    )
    assert {
        "manycore_postfixlog.statescripts.CLAIM",
        "manycore_postfixlog.statescripts.RECORD",
    } <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_script_builds_a_key_name(name: str) -> None:
    assert not _KEY_CONCAT.search(SCRIPTS[name]), f"{name} concatenates a key name"
    # The scan-based reaper's way of deriving a processing list is gone for good.
    assert ":processing:" not in SCRIPTS[name]
