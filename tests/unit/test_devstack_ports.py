"""`make run` with another port base than its kept config was written for: the ports move,
nothing else changes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from devstack.stack import (
    _ephemeral_ports,
    free_port,
    free_port_base,
    port_range,
    ports,
    rebase_ports,
    write_config,
)


def test_rebase_moves_ports_in_numbers_and_text_only() -> None:
    moved = {6390: 7000, 6393: 7003, 6394: 7004}
    data = {
        "redis": {"server": {"port": 6390, "password-file": "redis-password"}},
        "relayhost": "[127.0.0.1]:6393",
        "post-url": "http://127.0.0.1:6394/",
        "limits": {"max-connections-per-ip": 1000, "flag": True, "ratio": 6390.0},
        "list": [6393, "x:63930", "keep:12"],
    }
    assert rebase_ports(data, moved) == {
        "redis": {"server": {"port": 7000, "password-file": "redis-password"}},
        "relayhost": "[127.0.0.1]:7003",
        "post-url": "http://127.0.0.1:7004/",
        "limits": {"max-connections-per-ip": 1000, "flag": True, "ratio": 6390.0},
        "list": [7003, "x:63930", "keep:12"],
    }


def test_a_kept_config_follows_a_new_port_base(tmp_path: Path) -> None:
    _, customer = write_config(tmp_path, ports(6390))
    data = yaml.safe_load(customer.read_text())
    data["receiver"]["hostname"] = "edited.example"  # an operator's edit is kept
    customer.write_text(yaml.safe_dump(data))
    secret = (tmp_path / "configs" / "redis-password").read_text()

    _, again = write_config(tmp_path, ports(7100))
    moved = yaml.safe_load(again.read_text())
    assert moved["redis"]["server"]["port"] == 7100
    assert moved["receiver"]["bind"]["inet-port"] == 7101
    assert moved["backdata"]["post-url"] == "http://127.0.0.1:7104/"
    relay = moved["postfixlog"]["string-replacer"]["main-cf"]["relayhost"]
    assert relay == "[127.0.0.1]:7103"
    assert moved["receiver"]["hostname"] == "edited.example"
    assert (tmp_path / "configs" / "redis-password").read_text() == secret
    text = again.read_text()
    assert ":6390" not in text and "6393" not in text


def test_xdist_workers_pick_ports_from_slices_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each pytest-xdist worker is a process with its own record of ports handed out, so the
    workers' ranges must not overlap; without xdist the whole range below ``low`` is used."""
    low, width = 32768, 20
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # this test may run under xdist
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert port_range(low, width) == (10_000, low - width + 1)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    spans = []
    for n in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        start, stop = port_range(low, width)
        assert 10_000 <= start < stop
        spans.append(range(start, stop - 1 + width))  # every port a base of the slice covers
    for a, b in itertools.pairwise(spans):
        assert a.stop <= b.start
    assert spans[-1].stop <= low
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    real_low = _ephemeral_ports()[0]
    ports_start, ports_stop = port_range(real_low)
    bases_start, bases_stop = port_range(real_low, width)
    assert ports_start == bases_start > 10_000 and bases_stop < ports_stop
    for _ in range(10):
        assert ports_start <= free_port() < ports_stop
        assert bases_start <= free_port_base(width) < bases_stop
