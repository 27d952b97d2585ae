"""The private Postfix instance: its directories and configuration, its ``master`` running in
the foreground as our child, and the few queue operations PostfixLog needs.

Facts this relies on (docs/ARCHITECTURE.md#checked-facts, checked on our machines):

* ``postfix start-fg`` works only as PID 1, so ``master -d`` is run directly (master(8):
  ``-d`` stays in the foreground) with ``-c`` naming our config directory;
* ``postfix -c DIR check`` creates the queue's subdirectories with the right owners;
* Postfix's unprivileged processes must reach its files (no 0700 directory of root's on the
  way), and ``data_directory`` must belong to ``mail_owner``, or master exits at start;
* master(8) on SIGTERM takes all its children down at once (deliveries in progress are cut),
  on SIGHUP re-reads its configuration and restarts its daemons, which makes postlogd(8)
  reopen ``maillog_file`` (that is all ``postfix logrotate`` does besides renaming);
* postcat(1) and postsuper(1) work on the queue files whether or not master runs, but
  while it is down postsuper writes the log file itself as ``mail_owner``: it runs with a
  copy of the configuration that logs to stdout instead (``etc-tools``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import postconf
from .settings import Settings

log = logging.getLogger(__name__)

#: The queues whose sizes are metrics (README) and whose messages a stop hands back.
QUEUES = ("incoming", "active", "deferred", "corrupt", "hold")
#: Queues holding messages that are still to be delivered (corrupt ones are not ours to send).
LIVE_QUEUES = ("incoming", "active", "deferred", "hold")
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_TIMEOUT = 60.0


class PostfixError(Exception):
    """Postfix could not be set up, started, or asked something."""


@dataclass(frozen=True)
class Binaries:
    postfix: str
    postconf: str
    postsuper: str
    postcat: str
    master: str


def find_binaries() -> Binaries:
    """Postfix's commands; ``master`` lives in ``daemon_directory`` (postconf -d)."""
    found = {}
    for name in ("postfix", "postconf", "postsuper", "postcat"):
        path = shutil.which(name) or shutil.which(name, path=SBIN_PATH)
        if path is None:
            raise PostfixError(f"{name} not found: is Postfix installed?")
        found[name] = path
    try:
        daemon_dir = subprocess.run(  # noqa: S603 - Postfix's own postconf, fixed arguments
            [found["postconf"], "-dh", "daemon_directory"],
            capture_output=True,
            text=True,
            check=True,
            timeout=COMMAND_TIMEOUT,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostfixError(f"postconf -dh daemon_directory failed: {exc}") from None
    master = Path(daemon_dir) / "master"
    if not master.exists():
        raise PostfixError(f"{master} not found: is Postfix installed?")
    return Binaries(master=str(master), **found)


def count_files(directory: Path) -> int:
    """Messages in one queue directory (hashed queues have subdirectories)."""
    total = 0
    for _, _, names in os.walk(directory):
        total += len(names)
    return total


def queue_ids(queue_dir: Path, queues: Iterable[str] = LIVE_QUEUES) -> list[tuple[str, str]]:
    """(queue, queue id) of every message file in ``queues``."""
    found = []
    for queue in queues:
        for _, _, names in os.walk(queue_dir / queue):
            found += [(queue, name) for name in names]
    return found


async def run(
    argv: Sequence[str], stdin: bytes | None = None, stdout_owner: pwd.struct_passwd | None = None
) -> bytes:
    """Run a Postfix command; its stdout, or PostfixError with its stderr.

    ``stdout_owner``: stdout is a temporary file that user owns. postsuper(1) with the tools
    configuration reopens /dev/stdout to log, after it dropped to mail_owner; /dev/stdout is
    a magic link (proc(5) /proc/pid/fd), so only the file's own permissions count, not the
    directories above it, and not a pipe of root's. Postfix refuses a file without a name
    ("0 hard links"), hence a named one."""
    with tempfile.NamedTemporaryFile(prefix="manycore-postsuper-") as capture:
        stdout: int | IO[bytes] = asyncio.subprocess.PIPE
        if stdout_owner is not None:
            os.fchown(capture.fileno(), stdout_owner.pw_uid, stdout_owner.pw_gid)
            stdout = capture
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PostfixError(f"{argv[0]} timed out") from None
        if stdout_owner is not None:
            capture.seek(0)
            out = capture.read()
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()
        raise PostfixError(f"{Path(argv[0]).name} failed ({proc.returncode}): {text}")
    return out


def untraversable(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory above ``path`` that user ``uid`` cannot pass through, e.g. a
    0700 temporary directory of root's: master(8) exits at once when Postfix's own
    unprivileged processes cannot reach their files (docs/ARCHITECTURE.md#checked-facts)."""
    for directory in reversed(path.parents):
        st = directory.stat()
        mode = st.st_mode
        if st.st_uid == uid or mode & 0o001 or (st.st_gid == gid and mode & 0o010):
            continue
        return directory
    return None


class PostfixInstance:
    def __init__(self, settings: Settings, binaries: Binaries | None = None) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.bin = binaries or find_binaries()
        self.process: asyncio.subprocess.Process | None = None
        #: True once smtpd answered after the latest start (readiness).
        self.started = False
        self._stderr_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ setup

    def write_config(self) -> None:
        """Directories and rendered configuration. Owners and modes are what Postfix checks:
        config files root-owned and not group/world writable, data dir owned by mail_owner,
        and no 0700 on the way to the queue (the postfix user must traverse it)."""
        paths = self.paths
        owner = self._mail_owner()
        directories = (
            paths.base,
            paths.config_dir,
            paths.tools_config_dir,
            paths.queue_dir,
            paths.data_dir,
        )
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        paths.logfile.parent.mkdir(parents=True, exist_ok=True)
        for path in (paths.queue_dir, paths.logfile):
            blocked = untraversable(path, owner.pw_uid, owner.pw_gid)
            if blocked is not None:
                raise PostfixError(
                    f"{blocked} must be searchable by {owner.pw_name} (not mode 0700): "
                    f"postfix needs to reach {path}"
                )
        os.chown(paths.data_dir, owner.pw_uid, owner.pw_gid)
        for path, text in self.rendered().items():
            path.write_text(text, encoding="utf-8")
            path.chmod(0o644)

    def rendered(self) -> dict[Path, str]:
        """Postfix's config files as the settings make them (pure: nothing is written)."""
        paths, master_cf = self.paths, postconf.render_master_cf(self.settings)
        return {
            paths.config_dir / "main.cf": postconf.render_main_cf(self.settings),
            paths.config_dir / "master.cf": master_cf,
            paths.config_dir / postconf.TRANSPORT_MAP_FILE: postconf.transport_map(self.settings),
            paths.tools_config_dir / "main.cf": postconf.render_tools_main_cf(self.settings),
            paths.tools_config_dir / "master.cf": master_cf,
        }

    async def check(self) -> None:
        """``postfix check``: creates missing queue directories, reports bad permissions."""
        await run([self.bin.postfix, "-c", str(self.paths.config_dir), "check"])

    def _old_master_pid(self) -> int | None:
        try:
            return int((self.paths.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def leftover_pids(self) -> list[int]:
        """Processes of a master of this instance that outlived its PostfixLog (killed with
        SIGKILL): master was started as a process-group leader, so they share its group."""
        group = self._old_master_pid()
        if group is None or (self.process is not None and self.process.pid == group):
            return []
        daemon_dir = str(Path(self.bin.master).parent)
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                exe = os.readlink(entry / "exe")
            except OSError:
                continue
            # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces.
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 2 and int(fields[2]) == group and exe.startswith(daemon_dir):
                pids.append(int(entry.name))
        return pids

    async def stop_leftovers(self, grace: float = 10.0, timeout: float = 10.0) -> None:
        """Stop a previous run's Postfix of this instance; its queue stays as it is. Like a
        graceful stop, deferred mail is held and deliveries in progress may finish first
        (a cut delivery may be sent twice); the hold is released before Postfix starts."""
        pids = self.leftover_pids()
        if not pids:
            return
        log.warning("stopping a Postfix left over from a previous run", extra={"pids": pids})
        with contextlib.suppress(PostfixError):
            await self.hold_deferred()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            counts = self.queue_counts()
            if counts["active"] + counts["incoming"] == 0:
                break
            await asyncio.sleep(0.1)
        pids = self.leftover_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        # Polling: processes that are not our children give us nothing to wait on.
        while self.leftover_pids() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ master

    async def start(self, timeout: float = 30.0) -> None:
        """Start ``master -d`` and wait until smtpd's port accepts connections."""
        self.started = False
        self.process = await asyncio.create_subprocess_exec(
            self.bin.master,
            "-c",
            str(self.paths.config_dir),
            "-d",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group: our terminal's Ctrl-C is ours to handle, and every
            # Postfix process can be found (and stopped) by the group.
            start_new_session=True,
            # Log timestamps carry no zone; UTC is what the log parser assumes.
            env={**os.environ, "TZ": "UTC", "MAIL_CONFIG": str(self.paths.config_dir)},
        )
        self._stderr_task = asyncio.create_task(self._relay_stderr(self.process))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise PostfixError(
                    f"postfix master exited with {self.process.returncode} at start; "
                    f"see {self.paths.logfile}"
                )
            if await self.smtpd_answers():
                self.started = True
                log.info(
                    "postfix started",
                    extra={"pid": self.process.pid, "port": self.settings.smtpd_port},
                )
                return
            await asyncio.sleep(0.1)
        raise PostfixError(f"postfix smtpd did not listen on port {self.settings.smtpd_port}")

    async def _relay_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            log.warning("postfix master", extra={"stderr": line.decode(errors="replace").strip()})

    async def smtpd_answers(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.settings.smtpd_port), 2
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def ready(self) -> bool:
        return self.started and self.running

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    def reopen_log(self) -> None:
        """SIGHUP: master restarts its daemons, postlogd reopens maillog_file."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGHUP)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM master (it takes its children down) and make sure none is left."""
        process = self.process
        self.started = False
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._stderr_task, 2)
        log.info("postfix stopped", extra={"code": process.returncode})

    # ------------------------------------------------------------------ queue

    def queue_counts(self) -> dict[str, int]:
        """Messages per queue, from the queue directories (cheap: no showq round trip)."""
        return {queue: count_files(self.paths.queue_dir / queue) for queue in QUEUES}

    def queued(self) -> list[tuple[str, str]]:
        return queue_ids(self.paths.queue_dir)

    def _cmd(self, binary: str, *args: str) -> list[str]:
        return [binary, "-c", str(self.paths.config_dir), *args]

    async def postsuper(self, *args: str, stdin: bytes | None = None) -> None:
        """postsuper(1) with the tools configuration (see postconf.render_tools_main_cf);
        what it logs while master is down is relayed to our log."""
        argv = [self.bin.postsuper, "-c", str(self.paths.tools_config_dir), *args]
        out = await run(argv, stdin=stdin, stdout_owner=self._mail_owner())
        for line in out.decode(errors="replace").splitlines():
            log.info("postsuper", extra={"line": line})

    def _mail_owner(self) -> pwd.struct_passwd:
        return pwd.getpwnam(self.settings.main_cf.get("mail_owner", "postfix"))

    async def envelope(self, queue_id: str) -> str:
        """postcat(1) ``-e``: the envelope records (sender, done and pending recipients)."""
        out = await run(self._cmd(self.bin.postcat, "-e", "-q", queue_id))
        return out.decode("utf-8", errors="surrogateescape")

    async def content(self, queue_id: str) -> bytes:
        """postcat(1) ``-bh``: the message as Postfix stored it, without record markers."""
        return await run(self._cmd(self.bin.postcat, "-bh", "-q", queue_id))

    async def delete(self, queue_ids: Sequence[str]) -> None:
        """postsuper(1) ``-d -``: queue ids on stdin, one per line."""
        if queue_ids:
            ids = "".join(f"{q}\n" for q in queue_ids).encode()
            await self.postsuper("-d", "-", stdin=ids)

    async def hold_deferred(self) -> None:
        """Keep deferred mail from being retried while a stop drains the active queue."""
        await self.postsuper("-h", "ALL", "deferred")

    async def release_held(self) -> None:
        """Mail a previous stop put on hold but could not hand back is delivered again."""
        await self.postsuper("-H", "ALL")
