"""HttpReceiver's group commit, end to end: requests that arrive while a push is on its way
to Redis share the next script call, and each still gets its 200 only once its item is
there (a real process, a real redis-server held still with CLIENT PAUSE WRITE)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from redis import Redis as SyncRedis

from tests.helpers import RedisServer, running, stored_item
from tests.integration.conftest import build_message
from tests.integration.test_httpreceiver import P1, http_service, post

REQUESTS = 8
PAUSE_MS = 1500


def script_calls(client: SyncRedis) -> int:
    stats = client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


def test_concurrent_requests_share_one_push_and_each_waits_for_it(
    tmp_path: Path, redis_server: RedisServer, queues: SyncRedis
) -> None:
    with running(http_service(tmp_path, redis_server.port)) as api:
        assert post(api, build_message("gc-warm"))[0] == 200  # scripts loaded, connection up
        queues.config_resetstat()
        # Writes wait in Redis: the first push stays on its way while the others arrive.
        queues.client_pause(PAUSE_MS, all=False)  # CLIENT PAUSE ... WRITE
        started = time.monotonic()
        with ThreadPoolExecutor(REQUESTS) as pool:
            answers = list(pool.map(lambda n: post(api, build_message(f"gc-{n}")), range(REQUESTS)))
        waited = time.monotonic() - started
        assert [status for status, _, _ in answers] == [200] * REQUESTS
        # No 200 before Redis took writes again: every answer waited for its own push.
        assert waited >= PAUSE_MS / 1000 * 0.9
        queued = {stored_item(raw).uuid for raw in queues.lrange(P1, 0, -1)}
        assert queued >= {f"gc-{n}" for n in range(REQUESTS)}
        # One call for the request that found Redis idle, one for all that came meanwhile
        # (a third at most, for a request a little late); one call each would be 8.
        calls = script_calls(queues)
        assert calls <= 3
