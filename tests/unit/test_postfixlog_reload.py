"""Which config changes PostfixLog applies live (reload.py's pure part)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from manycore_common.config import Config, load_config
from manycore_postfixlog.reload import changed_keys, is_live, plan
from tests.helpers import CUSTOMER_EXAMPLE, GLOBAL_EXAMPLE


def test_changed_keys_are_dotted_paths_of_what_differs() -> None:
    old = {"a": {"b": 1, "c": {"d": "x"}}, "e": 2}
    new = {"a": {"b": 1, "c": {"d": "y", "f": 3}}, "g": 2}
    assert changed_keys(old, new) == ["a.c.d", "a.c.f", "e", "g"]
    assert changed_keys(old, old) == []


def test_live_keys_and_their_children_only() -> None:
    assert is_live("postfixlog.string-replacer.main-cf.relayhost")
    assert is_live("postfixlog.throttled-transport.domains")
    assert is_live("postfixlog.queue-on-stop")
    assert not is_live("postfixlog.string-replacer.master-cf.smtpd-port")
    assert not is_live("postfixlog.postfix-directory")
    assert not is_live("postfixlog.string-replacer.main-cf-extra")
    assert not is_live("global:postfix.incoming-queue-name")


def load(
    tmp_path: Path, name: str, change: dict[str, Any], global_change: dict[str, Any]
) -> Config:
    customer = yaml.safe_load(CUSTOMER_EXAMPLE.read_text())
    customer["postfixlog"].update(change)
    global_ = yaml.safe_load(GLOBAL_EXAMPLE.read_text())
    global_.update(global_change)
    directory = tmp_path / name
    directory.mkdir()
    (directory / "c.yaml").write_text(yaml.safe_dump(customer))
    (directory / "g.yaml").write_text(yaml.safe_dump(global_))
    return load_config(directory / "g.yaml", directory / "c.yaml", "postfixlog")


def test_plan_refuses_what_needs_a_restart(tmp_path: Path) -> None:
    base = load(tmp_path, "a", {}, {})
    live = load(tmp_path, "b", {"max-active-incoming": 7, "deferred-events": True}, {})
    assert plan(base, live).keys == ("postfixlog.deferred-events", "postfixlog.max-active-incoming")
    assert plan(base, live).refused == ()
    moved = load(tmp_path, "c", {"postfix-directory": "/elsewhere", "max-active-incoming": 7}, {})
    assert plan(base, moved).refused == ("postfixlog.postfix-directory",)
    renamed = load(tmp_path, "d", {}, {"postfix": {"incoming-queue-name": "OTHER"}})
    assert plan(base, renamed).refused == ("global:postfix.incoming-queue-name",)
