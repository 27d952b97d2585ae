"""The log follower on real files: whole lines only, rotation by rename, truncation, and
resuming at a saved position that has since been renamed."""

from __future__ import annotations

import os
from pathlib import Path

from manycore_postfixlog.follower import LogFollower
from manycore_postfixlog.state import Position


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def texts(follower: LogFollower) -> list[str]:
    return [line.text for line in follower.read()]


def test_whole_lines_only_and_positions(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("one\ntw")
    follower = LogFollower(log)
    follower.open(None)
    lines = follower.read()
    assert [ln.text for ln in lines] == ["one"]
    assert (lines[0].start.offset, lines[0].end.offset) == (0, 4)
    with log.open("a") as f:
        f.write("o\nthree\n")
    lines = follower.read()
    assert [ln.text for ln in lines] == ["two", "three"]
    assert [ln.start.offset for ln in lines] == [4, 8]
    position = follower.position
    assert position is not None and position.offset == log.stat().st_size
    assert position.ino == log.stat().st_ino


def test_a_missing_file_is_opened_once_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    follower = LogFollower(log)
    follower.open(None)
    assert follower.read() == [] and follower.position is None
    log.write_text("hello\n")
    assert texts(follower) == ["hello"]


def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("a\n")
    clock = Clock()
    follower = LogFollower(log, settle_seconds=2, clock=clock)
    follower.open(None)
    assert texts(follower) == ["a"]
    os.replace(log, tmp_path / "mail.log.1")
    log.write_text("new1\n")
    # postlogd may still write to the renamed file until it reopens the path.
    with (tmp_path / "mail.log.1").open("a") as f:
        f.write("late\nlast-without-newline")
    assert texts(follower) == ["late"]
    clock.now = 1.0
    assert texts(follower) == []  # not settled yet
    clock.now = 3.5
    assert texts(follower) == ["last-without-newline"]  # handed out as it is, then switch
    assert texts(follower) == ["new1"]


def test_truncation_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("first line\nsecond line\n")
    follower = LogFollower(log)
    follower.open(None)
    assert len(follower.read()) == 2
    log.write_text("x\n")  # copytruncate
    assert texts(follower) == ["x"]


def test_resume_at_a_saved_position_in_a_renamed_file(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("a\nb\n")
    st = log.stat()
    saved = Position(st.st_dev, st.st_ino, 2)
    with log.open("a") as f:
        f.write("c\n")
    os.replace(log, tmp_path / "mail.log.1")
    log.write_text("d\n")
    clock = Clock()
    follower = LogFollower(log, settle_seconds=2, clock=clock)
    follower.open(saved)
    assert not follower.lost_position
    assert texts(follower) == ["b", "c"]
    clock.now = 5
    assert texts(follower) == []  # the switch
    assert texts(follower) == ["d"]


def test_a_lost_position_reads_the_current_file_from_the_top(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("a\n")
    follower = LogFollower(log)
    follower.open(Position(0, 1, 999))
    assert follower.lost_position
    assert texts(follower) == ["a"]


def test_a_lost_position_reads_the_rotated_file_first(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    (tmp_path / "mail.log.1").write_text("old\n")
    log.write_text("new\n")
    clock = Clock()
    follower = LogFollower(log, settle_seconds=2, clock=clock)
    follower.open(Position(0, 1, 999))
    assert texts(follower) == ["old"]
    clock.now = 5
    assert texts(follower) == []
    assert texts(follower) == ["new"]


def test_at_end_of_current(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("a\n")
    follower = LogFollower(log)
    follower.open(None)
    assert follower.at_end_of_current()[0] is False
    follower.read()
    assert follower.at_end_of_current() == (True, 2)
