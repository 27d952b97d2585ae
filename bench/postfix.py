"""A private Postfix for the benchmarks' baselines, configured as PostfixLog configures the
stack's own (the main.cf it renders from the same config files: loopback only, DNS off,
relayhost = the local sink), with its own directories and smtpd port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.common import bench_fail, free_port, port_open


class PostfixAlone:
    def __init__(
        self,
        root: Path,
        global_file: Path,
        customer_file: Path,
        main_cf: dict[str, str] | None = None,
        name: str = "bench-postfix-alone",
    ) -> None:
        from manycore_common.config import load_config
        from manycore_postfixlog import settings as postfixlog_settings
        from manycore_postfixlog.instance import PostfixInstance

        rendered = postfixlog_settings.from_config(load_config(global_file, customer_file))
        self.port = free_port()
        settings = dict(rendered.main_cf)
        # smtpd would look up the client's name (127.0.0.1: /etc/hosts, but then "dns" in
        # nsswitch is next): none of that here. The stack's Postfix does it; the baseline
        # doing less only makes the ratio stricter.
        settings["smtpd_peername_lookup"] = "no"
        settings.update(main_cf or {})
        self.settings = dataclasses.replace(
            rendered,
            paths=postfixlog_settings.Paths(
                base=root / "postfix", logfile=root / "log" / "mail.log"
            ),
            smtpd_port=self.port,
            main_cf=settings,
            instance=name,
        )
        self.instance = PostfixInstance(self.settings)
        self.process: subprocess.Popen[bytes] | None = None
        self.queue = self.settings.paths.queue_dir
        self.log = self.settings.paths.logfile

    def start(self, timeout: float = 30) -> PostfixAlone:
        self.instance.write_config()
        asyncio.run(self.instance.check())  # creates the queue directories
        config_dir = str(self.settings.paths.config_dir)
        # master in the foreground as our child, in its own process group (as PostfixLog
        # runs it, see manycore_postfixlog.instance), so that stop() finds every process.
        self.process = subprocess.Popen(
            [self.instance.bin.master, "-c", config_dir, "-d"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "TZ": "UTC", "MAIL_CONFIG": config_dir},
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise bench_fail(f"Postfix alone did not start; see {self.log}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> PostfixAlone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
