"""Loaded by every Python process ``bench.rediscost`` starts (this directory is put first on
PYTHONPATH): counts the Redis round trips and commands the process's redis-py asyncio clients
send, and writes the counts to ``$MANYCORE_REDISCOST_DIR/<program>-<pid>.json`` every 0.2 s.

A round trip is one ``send_packed_command`` (one command, or a whole pipeline, then its
replies); a command is one ``pack_command`` (an EVALSHA counts once, whatever its script
runs inside Redis), and so is a command the caller packed itself and sent as one bytes object
(the Transformer's suppression look-up). Without the variable this does nothing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any


def packed_name(command: bytes) -> str:
    """The name of a command packed as RESP (``*<n>\\r\\n$<len>\\r\\n<name>\\r\\n...``)."""
    parts = command.split(b"\r\n", 3)
    return parts[2].decode("ascii", "replace").upper() if len(parts) > 3 else "?"


def _install(directory: Path) -> None:
    from redis.asyncio import connection

    counts: Counter[str] = Counter()
    base = connection.AbstractConnection
    send, pack = base.send_packed_command, base.pack_command

    async def counted_send(self: Any, command: Any, check_health: bool = True) -> None:
        counts["round_trips"] += 1
        if isinstance(command, bytes):
            # Packed by the caller, not by pack_command: the suppression look-up's EVALSHA
            # (manycore_common/suppressionlookup.py) on the Transformer's held connection.
            counts["commands"] += 1
            counts["cmd:" + packed_name(command)] += 1
        await send(self, command, check_health)

    def counted_pack(self: Any, *args: Any) -> list[bytes]:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        counts["commands"] += 1
        counts["cmd:" + name.split()[0].upper()] += 1
        return pack(self, *args)

    base.send_packed_command = counted_send  # type: ignore[method-assign]
    base.pack_command = counted_pack  # type: ignore[method-assign]
    program = Path(sys.argv[0]).name or "python"
    target = directory / f"{program}-{os.getpid()}.json"

    def dump() -> None:
        while True:
            time.sleep(0.2)
            if counts:
                tmp = target.with_suffix(".tmp")
                tmp.write_text(json.dumps(dict(counts)))
                tmp.replace(target)

    threading.Thread(target=dump, daemon=True, name="rediscost").start()


if os.environ.get("MANYCORE_REDISCOST_DIR"):
    _install(Path(os.environ["MANYCORE_REDISCOST_DIR"]))
