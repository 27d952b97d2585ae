"""Running redis-server as a child: its runtime configuration, start, and the saving stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from manycore_common.config import RedisServer
from manycore_common.redisconn import NO_CLIENT_SETINFO

from .acl import acl_password

log = logging.getLogger(__name__)

ADMIN_USER = "default"


def base_config_path() -> Path:
    return Path(str(resources.files("manycore_redis") / "redis.conf"))


def render_config(
    settings: RedisServer,
    admin_password: str,
    base: Path,
    users: Sequence[str],
    extra: Sequence[str] = (),
) -> str:
    """The runtime configuration: the shipped base file plus what depends on this deployment.

    Users: ``users`` are the services' (``acl.service_rules``: one per service, or the older
    shared user). ``default`` is the administrator this supervisor uses to save and stop,
    with a password that is random per start and never leaves this process.

    Why ``default`` and not "off": Redis 7.0 replays MULTI/EXEC blocks of the AOF (which is
    how every Lua script's writes are logged) as the default user, and checks that user's
    permissions at EXEC. With ``default`` switched off every such block fails on load
    ("NOPERM ACLs rules changed ...") and the writes of all our scripts are lost at a restart.
    tests/integration/test_redis_module.py kills Redis after script writes to keep this true."""
    return "\n".join(
        [
            f"include {base}",
            f"port {settings.port}",
            f"bind {settings.bind}",
            f"dir {settings.data_dir}",
            f"appendfsync {settings.appendfsync}",
            f"maxmemory {settings.maxmemory}",
            "daemonize no",
            f"user default on resetpass {acl_password(admin_password)} ~* &* +@all",
            *users,
            *extra,
            "",
        ]
    )


async def _lock_data_dir(data_dir: Path, timeout: float) -> int:
    """An exclusive lock on the data directory, waited for: a redis-server from before (an
    orphan still saving after its supervisor died) must be gone before another one loads the
    same files, or the newer one could start from an older state."""
    fd = os.open(data_dir / ".manycore-redis.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if asyncio.get_running_loop().time() > deadline:
                os.close(fd)
                raise RuntimeError(f"{data_dir} is still in use by another redis-server") from None
            await asyncio.sleep(0.1)


def _stop_with_parent() -> None:
    """In the child before exec: if manycore-redis dies (even by SIGKILL), the kernel sends
    redis-server SIGTERM, which it answers with a saving shutdown. In a container the runtime
    does that anyway; elsewhere an orphan would hold the port and the data directory."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class RunningServer:
    process: asyncio.subprocess.Process
    admin: Redis
    config_dir: Path
    log_relay: asyncio.Task[None]

    async def wait(self) -> int:
        return await self.process.wait()


async def start(
    settings: RedisServer,
    users: Sequence[str],
    *,
    extra: Sequence[str] = (),
    timeout: float = 30.0,
) -> RunningServer:
    """redis-server with the rendered config: the services' ``users`` (``acl``) and
    ``extra`` lines (``roles``)."""
    admin_password = secrets.token_urlsafe(32)
    text = render_config(settings, admin_password, base_config_path(), users, extra)
    return await launch(
        settings,
        settings.redis_server_binary,
        text,
        (ADMIN_USER, admin_password),
        timeout=timeout,
    )


async def launch(
    settings: RedisServer,
    binary_name: str,
    config_text: str,
    admin_login: tuple[str | None, str | None],
    *,
    timeout: float = 30.0,
) -> RunningServer:
    """Run ``binary_name`` (redis-server or redis-sentinel) with ``config_text``, wait until
    it answers PING as ``admin_login``."""
    binary = shutil.which(binary_name) or binary_name
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config_dir = Path(tempfile.mkdtemp(prefix="manycore-redis-"))  # mode 0700
    config = config_dir / "redis.conf"
    config.write_text(config_text)
    config.chmod(0o600)
    lock = await _lock_data_dir(settings.data_dir, timeout)
    process = await asyncio.create_subprocess_exec(
        binary,
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_stop_with_parent,
        pass_fds=(lock,),  # redis-server holds the data directory's lock while it lives
    )
    os.close(lock)
    relay = asyncio.create_task(_relay_log(process))
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "*", "::") else settings.bind.split()[0]
    admin = Redis(
        host=host,
        port=settings.port,
        username=admin_login[0],
        password=admin_login[1],
        socket_connect_timeout=2,
        socket_timeout=30,
        # SHUTDOWN closes the connection on success: a retry would only wait for nothing.
        retry=Retry(NoBackoff(), retries=0),
        **NO_CLIENT_SETINFO,  # why: redisconn.NO_CLIENT_SETINFO
    )
    await _wait_ready(process, admin, timeout)
    log.info(
        "redis-server started",
        extra={
            "pid": process.pid,
            "port": settings.port,
            "role": settings.role,
            "appendfsync": settings.appendfsync,
        },
    )
    return RunningServer(process, admin, config_dir, relay)


async def _wait_ready(process: asyncio.subprocess.Process, admin: Redis, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"redis-server exited at start with code {process.returncode}")
        with contextlib.suppress(RedisError, OSError):
            # While loading a large AOF, Redis answers LOADING; wait until it serves.
            if await admin.ping():
                return
        if asyncio.get_running_loop().time() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not answer within {timeout}s")
        await asyncio.sleep(0.1)


_REDIS_LOG_LEVELS = {".": logging.DEBUG, "-": logging.INFO, "*": logging.INFO, "#": logging.WARNING}


async def _relay_log(process: asyncio.subprocess.Process) -> None:
    """redis-server's own log lines, re-emitted as our JSON log lines
    (docs/ARCHITECTURE.md#runtime-contract)."""
    assert process.stdout is not None
    redis_log = logging.getLogger("redis-server")
    async for raw in process.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        # "pid:role dd Mon yyyy hh:mm:ss.mmm <level> message"
        parts = line.split(" ", 6)
        if len(parts) == 7 and parts[5] in _REDIS_LOG_LEVELS:
            redis_log.log(_REDIS_LOG_LEVELS[parts[5]], parts[6])
        elif line:
            redis_log.info(line)


async def bgsave(server: RunningServer, timeout: float = 600) -> None:
    """A consistent RDB snapshot on disk (for a periodic backup)."""
    before = await server.admin.lastsave()
    with contextlib.suppress(RedisError):
        await server.admin.bgsave()
    deadline = asyncio.get_running_loop().time() + timeout
    while await server.admin.lastsave() == before:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("BGSAVE did not finish")
        await asyncio.sleep(0.2)
    info = await server.admin.info("persistence")
    if info.get("rdb_last_bgsave_status") != "ok":
        raise RuntimeError(f"BGSAVE failed: {info.get('rdb_last_bgsave_status')}")


async def stop(server: RunningServer, timeout: float, *, save: bool = True) -> int:
    """SHUTDOWN SAVE: Redis writes a final RDB and fsyncs the AOF, then exits. A sentinel
    (``save`` False) has nothing to save: SIGTERM."""
    if not save:
        server.process.terminate()
    with contextlib.suppress(RedisConnectionError):  # the connection closes on success
        if save:
            await server.admin.shutdown(save=True)
    try:
        code = await asyncio.wait_for(server.process.wait(), timeout)
    except TimeoutError:
        log.error("redis-server did not stop in time: killing it")
        server.process.kill()
        code = await server.process.wait()
    with contextlib.suppress(RedisError, OSError):
        await server.admin.aclose()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.log_relay, 5)
    shutil.rmtree(server.config_dir, ignore_errors=True)
    log.info("redis-server stopped", extra={"code": code})
    return code
