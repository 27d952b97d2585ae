"""Follows Postfix's log file across rotation, truncation and restarts.

A position is (device, inode, byte offset) of the end of the last whole line handed out, so
it names the file even after a rename. Rotation (the file renamed, a new one created at the
path, see ``postfix logrotate`` in postfix(1)) is noticed when the path names another inode:
the old file is read to its end and, once it has stopped growing for ``settle_seconds``
(postlogd may write a few more lines before it reopens the path), the new file is read from
its start. Truncation in place (copytruncate) is noticed when the file is shorter than the
offset. After a restart, a saved position in a file that has been renamed since is found
again by its inode among ``<log>.*`` beside the path.

Only whole lines are handed out: a line Postfix is still writing waits for its newline.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .state import Position

log = logging.getLogger(__name__)

#: Longest line kept waiting for its newline; longer ones are handed out cut (Postfix's own
#: limit on a logged line is far below this).
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Line:
    text: str
    #: Where the line starts (resuming here reads it again) and where it ends.
    start: Position
    end: Position


class LogFollower:
    def __init__(
        self,
        path: Path,
        settle_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.settle_seconds = settle_seconds
        self.clock = clock
        self._file: BinaryIO | None = None
        self._dev = 0
        self._ino = 0
        self._offset = 0  # end of the last whole line handed out
        self._buffer = b""
        self._last_growth = clock()
        #: Set when a saved position could not be found again (lines may have been missed).
        self.lost_position = False

    # ------------------------------------------------------------------ opening

    def _open(self, path: Path, offset: int) -> bool:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return False
        st = os.fstat(handle.fileno())
        if st.st_size < offset:
            offset = 0  # truncated since the position was saved
        handle.seek(offset)
        self.close()
        self._file, self._dev, self._ino = handle, st.st_dev, st.st_ino
        self._offset, self._buffer = offset, b""
        self._last_growth = self.clock()
        return True

    def _find_by_inode(self, position: Position) -> Path | None:
        """The rotated file a position points into (``maillog.1`` etc.)."""
        candidates = [self.path, *sorted(self.path.parent.glob(self.path.name + ".*"))]
        for candidate in candidates:
            try:
                st = candidate.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (position.dev, position.ino):
                return candidate
        return None

    def open(self, saved: Position | None) -> None:
        """Resume at ``saved`` (in whichever file now holds it), or start at the top of the
        current file. A file that does not exist yet is opened once it appears.

        A saved position that cannot be found (its file was rotated away) falls back to the
        last rotated file ``<log>.1`` from its start, then the current one: reading lines
        twice is harmless, missing them is not."""
        if saved is not None:
            found = self._find_by_inode(saved)
            if found is not None and self._open(found, saved.offset):
                return
            self.lost_position = True
            log.warning(
                "saved log position not found: reading the logs from their start",
                extra={"path": str(self.path)},
            )
            if self._open(self.path.with_name(self.path.name + ".1"), 0):
                return
        self._open(self.path, 0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------------ reading

    @property
    def position(self) -> Position | None:
        if self._file is None:
            return None
        return Position(self._dev, self._ino, self._offset)

    def _path_identity(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def at_end_of_current(self) -> tuple[bool, int]:
        """(everything of the file at the path has been handed out, its size)."""
        if self._file is None or self._path_identity() != (self._dev, self._ino):
            return False, 0
        size = os.fstat(self._file.fileno()).st_size
        return self._offset >= size and not self._buffer, size

    def read(self, max_bytes: int = 1 << 20) -> list[Line]:
        """Whole lines written since the last call (at most about ``max_bytes``)."""
        if self._file is None and not self._open(self.path, 0):
            return []
        assert self._file is not None
        if os.fstat(self._file.fileno()).st_size < self._offset + len(self._buffer):
            log.warning("log file truncated: reading it from its start")
            self._file.seek(0)
            self._offset, self._buffer = 0, b""
        chunk = self._file.read(max_bytes)
        if chunk:
            self._last_growth = self.clock()
            return self._split(chunk)
        return self._maybe_switch()

    def _split(self, chunk: bytes) -> list[Line]:
        data = self._buffer + chunk
        lines: list[Line] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            lines.append(self._line(data[start : newline + 1], start))
            start = newline + 1
        rest = data[start:]
        if len(rest) > MAX_LINE:
            lines.append(self._line(rest, start))
            start, rest = len(data), b""
        self._offset += start
        self._buffer = rest
        return lines

    def _line(self, raw: bytes, at: int) -> Line:
        begin = self._offset + at
        return Line(
            raw.decode("utf-8", "replace").rstrip("\r\n"),
            Position(self._dev, self._ino, begin),
            Position(self._dev, self._ino, begin + len(raw)),
        )

    def _maybe_switch(self) -> list[Line]:
        """At the end of a file the path no longer names: move to the new file once the old
        one has been quiet long enough for postlogd to have reopened the path."""
        identity = self._path_identity()
        if identity is None or identity == (self._dev, self._ino):
            return []
        if self.clock() - self._last_growth < self.settle_seconds:
            return []
        # A last line without its newline will never be completed now: hand it out as it is.
        tail = [self._line(self._buffer, 0)] if self._buffer else []
        log.info("log file rotated: following the new file", extra={"path": str(self.path)})
        self._open(self.path, 0)
        return tail
