"""HttpReceiver's buffered request log, in a real process: INFO lines are held, a warning
is written at once behind them, and a graceful stop writes what is still held."""

from __future__ import annotations

import json
import time
from pathlib import Path

from redis import Redis as SyncRedis

from tests.helpers import RedisServer, wait_for
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import http_service, post


def messages(log: Path) -> list[str]:
    """Each JSON line of the log as "<msg> <uuid>"."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [f"{line.get('msg')} {line.get('uuid')}" for line in lines]


def test_info_lines_wait_warnings_do_not_and_a_stop_writes_the_rest(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    service = http_service(
        tmp_path, redis_server.port, **{"httpreceiver__log-buffer-seconds": 60}
    ).start()
    try:
        assert post(service, build_message("log-1"))[0] == 200
        time.sleep(0.3)
        assert "message enqueued log-1" not in messages(service.log)  # held
        assert post(service, build_message("log-2"), auth="Basic bm9ib2R5Ondyb25n")[0] == 401
        wait_for(lambda: any(m.startswith("authentication failed") for m in messages(service.log)))
        written = messages(service.log)
        # The held line came first, then the warning: order kept.
        assert written.index("message enqueued log-1") < written.index("authentication failed None")
        assert post(service, build_message("log-3"))[0] == 200
        time.sleep(0.3)
        assert "message enqueued log-3" not in messages(service.log)
    finally:
        assert service.stop() == 0
    assert "message enqueued log-3" in messages(service.log)
