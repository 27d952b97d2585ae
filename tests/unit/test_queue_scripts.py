"""Static checks of every Lua script of the suite (issue 17 items 1 and 5): no script builds a
key name, so every key it touches is in KEYS, where a cluster client can see it. (The slot
test, tests/integration/test_slots.py, runs them all on a Redis Cluster node.)"""

from __future__ import annotations

import re

import pytest

from manycore_common import events, queueinspect, queuescripts, suppressionstore
from manycore_postfixlog import statescripts

SCRIPTS = {
    f"{module.__name__}.{name}": value
    for module in (queuescripts, statescripts, events, queueinspect, suppressionstore)
    for name, value in vars(module).items()
    if name.isupper() and isinstance(value, str) and "redis.call" in value
}
#: A key name made by concatenation with a KEYS entry (what the SCAN-era reaper did).
_KEY_CONCAT = re.compile(r"KEYS\[\d+\]\s*\.\.|\.\.\s*KEYS\[\d+\]")
#: A command whose first argument (the key, for every command the scripts use) is made by
#: concatenation, e.g. ``redis.call('HGETALL', ARGV[1] .. bucket)``.
_BUILT_KEY = re.compile(r"redis\.p?call\(\s*'\w+'\s*,[^,)]*\.\.")


def test_the_scripts_are_found() -> None:
    assert {"manycore_common.queuescripts.REAP", "manycore_common.queuescripts.TAKE_MANY"} <= set(
        SCRIPTS
    )
    assert {
        "manycore_postfixlog.statescripts.CLAIM",
        "manycore_postfixlog.statescripts.RECORD",
    } <= set(SCRIPTS)
    assert "manycore_common.suppressionstore._SCAN" in SCRIPTS


def test_a_built_key_is_recognised() -> None:
    assert _BUILT_KEY.search("redis.call('HGETALL', ARGV[1] .. string.format('%04x', b))")
    assert not _BUILT_KEY.search("redis.call('HSETNX', KEYS[1], 'f:' .. ARGV[1], '1')")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_script_builds_a_key_name(name: str) -> None:
    assert not _KEY_CONCAT.search(SCRIPTS[name]), f"{name} concatenates a key name"
    assert not _BUILT_KEY.search(SCRIPTS[name]), f"{name} builds a key name"
    # The scan-based reaper's way of deriving a processing list is gone for good.
    assert ":processing:" not in SCRIPTS[name]
