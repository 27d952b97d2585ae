"""Send a test message into the running local stack (`make run`):

    .venv/bin/python -m devstack.send --to soft-bounce@example.test [--stream-id demo]

It reads the stack's generated config for HttpReceiver's address and a login, makes a
message with a fresh X-Uuid, posts it, and prints the uuid to look for in the webhook inbox.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from email.utils import formatdate
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def message(to: str, uuid: str, stream_id: str | None, sender: str) -> bytes:
    lines = [
        f"From: Demo Shop <{sender}>",
        f"To: {to}",
        f"Subject: Test message {uuid}",
        f"Date: {formatdate()}",
        f"X-Uuid: {uuid}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    if stream_id:
        lines.append(f"X-Stream-Id: {stream_id}")
    return ("\r\n".join(lines) + "\r\n\r\nHello from Manycore-Mail's local stack.\r\n").encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devstack.send")
    parser.add_argument("--to", required=True, help="e.g. hard-bounce@example.test")
    parser.add_argument("--stream-id", default="demo")
    parser.add_argument("--from", dest="sender", default="shop@example.com")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run")
    args = parser.parse_args(argv)
    config_file = args.workdir / "configs" / "inboxbooster-mailer-customer.yaml"
    if not config_file.exists():
        sys.exit(f"no local stack config at {config_file}: start it with `make run` first")
    section = yaml.safe_load(config_file.read_text())["httpreceiver"]
    login = section["auth-logins"][0]
    port = section["bind"]["inet-port"]
    uuid = "demo" + os.urandom(6).hex()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/mail/send",
        data=message(args.to, uuid, args.stream_id, args.sender),
        headers={
            "Content-Type": "message/rfc822",
            "Authorization": "Basic "
            + base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            print(json.dumps(json.loads(response.read())))
    except urllib.error.HTTPError as exc:
        sys.exit(f"{exc.code}: {exc.read().decode()}")


if __name__ == "__main__":
    main()
