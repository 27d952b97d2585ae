"""The health server over real HTTP on loopback: what Prometheus and the kubelet ask, what
anything else gets, and that a client sending nothing cannot hold it."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry, Counter

from manycore_common import health
from manycore_common.config import Prometheus
from tests.helpers import LOOPBACK


async def _ask(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(request)
    raw = await asyncio.wait_for(reader.read(), 5)  # the server closes after its answer
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body) or request.startswith(b"HEAD")
    return int(lines[0].split(" ")[1]), headers, body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: Prometheus/2\r\n\r\n".encode()


async def test_metrics_livez_readyz_and_the_rest() -> None:
    registry = CollectorRegistry()
    Counter("things", "Things", registry=registry).inc(3)
    ok = True

    async def check() -> bool:
        return ok

    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    server = health.HealthServer(
        Prometheus.model_validate({"inet-interface": LOOPBACK, "inet-port": 0}),
        {"redis": check},
        registry=registry,
        check_timeout=0.2,
    )
    await server.start()
    assert server.port
    try:
        status, headers, body = await _ask(server.port, _get("/metrics"))
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"things_total 3.0" in body
        status, _, body = await _ask(server.port, _get("/livez?verbose=1"))
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert (await _ask(server.port, _get("/readyz")))[0] == 200
        ok = False
        status, _, body = await _ask(server.port, _get("/readyz"))
        assert (status, json.loads(body)["failing"]) == (503, ["redis"])
        server.checks = {"slow": hangs}
        status, _, body = await _ask(server.port, _get("/readyz"))
        assert (status, json.loads(body)["failing"]) == (503, ["slow"])
        status, headers, body = await _ask(server.port, b"HEAD /livez HTTP/1.1\r\n\r\n")
        assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0
        assert (await _ask(server.port, _get("/nothing")))[0] == 404
        assert (await _ask(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await _ask(server.port, b"hello\r\n\r\n"))[0] == 400
    finally:
        await server.stop()


async def test_a_huge_request_head_is_closed() -> None:
    server = health.HealthServer(
        Prometheus.model_validate({"inet-interface": LOOPBACK, "inet-port": 0}), {}
    )
    await server.start()
    assert server.port
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        writer.write(b"GET /" + b"a" * (2 * health.MAX_REQUEST_HEAD))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
        # The server still answers others.
        assert (await _ask(server.port, _get("/livez")))[0] == 200
    finally:
        await server.stop()
