"""A loopback TCP proxy in front of a Redis primary that can make its replicas fall behind.

Everyone (sentinels, clients, replicas) reaches the primary through it, so the address the
sentinels monitor is the one the replicas replicate from. A connection whose client sent
``PSYNC`` is a replication stream; ``hold()`` keeps what the primary sends on those (the
replica's acknowledgements still go up, so the primary sees a connected replica with a small
lag, as with a slow network) and never delivers it: when the primary dies, the replicas never
got its last writes. Only loopback."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.helpers import LOOPBACK


class HoldingProxy:
    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self.holding = threading.Event()
        self._listener = socket.create_server((LOOPBACK, self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.holding.set()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=1)
            except OSError:
                downstream.close()  # the primary is gone: refuse like it would
                continue
            upstream.settimeout(None)
            link = _Link(downstream, upstream)
            threading.Thread(target=self._up, args=(link,), daemon=True).start()
            threading.Thread(target=self._down, args=(link,), daemon=True).start()

    def _up(self, link: _Link) -> None:
        """Client to primary, always forwarded; notes whether this is a replica's link."""
        while data := _recv(link.downstream):
            link.replica = link.replica or b"PSYNC" in data.upper()
            if not _send(link.upstream, data):
                break
        link.close()

    def _down(self, link: _Link) -> None:
        """Primary to client; swallowed on a replica's link while holding."""
        while data := _recv(link.upstream):
            if link.replica and self.holding.is_set():
                continue  # never delivered: the replica falls behind for good
            if not _send(link.downstream, data):
                break
        link.close()


class _Link:
    def __init__(self, downstream: socket.socket, upstream: socket.socket) -> None:
        self.downstream = downstream
        self.upstream = upstream
        self.replica = False

    def close(self) -> None:
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False
