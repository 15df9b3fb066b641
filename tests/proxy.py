"""A TCP proxy a test puts between the code and a server, to cut the network and mend it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {
    "postgres": 5432, "postgresql": 5432, "amqp": 5672, "redis": 6379, "redis+stream": 6379,
    "nats": 4222, "mysql": 3306,
}  # fmt: skip


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``.

    ``cut()`` drops the open connections and swallows new ones without ever
    answering, as a dead network does (``refuse=True``: closes them at once,
    as a stopped server's host does); ``mend()`` forwards again.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._cut = threading.Event()
        self._refuse = False
        self._open: list[socket.socket] = []
        self._budget: int | None = None  # bytes to the server before cut_after cuts
        self._mend_after = 0.0
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def to(cls, url: str) -> tuple[Proxy, str]:
        """A proxy to the (local) server ``url`` names, and ``url`` through the proxy."""
        parts = urlsplit(url)
        proxy = cls(parts.port or DEFAULT_PORTS[parts.scheme])
        credentials, _, _ = parts.netloc.rpartition("@")
        netloc = (f"{credentials}@" if credentials else "") + f"127.0.0.1:{proxy.port}"
        return proxy, urlunsplit(parts._replace(netloc=netloc))

    def cut(self, *, refuse: bool = False) -> None:
        self._refuse = refuse
        self._cut.set()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def mend(self) -> None:
        self._cut.clear()

    def cut_after(self, sent: int, *, mend_after: float) -> None:
        """Once ``sent`` more bytes went through to the server, cut (refusing) and mend
        ``mend_after`` seconds later: a connection lost mid-conversation, whatever the
        pace of the client (what it sent last reached the server; the answer did not)."""
        with self._lock:
            self._budget = sent
        self._mend_after = mend_after

    def _spend(self, sent: int) -> None:
        with self._lock:
            if self._budget is None:
                return
            self._budget -= sent
            if self._budget > 0:
                return
            self._budget = None

        def blip() -> None:
            self.cut(refuse=True)
            time.sleep(self._mend_after)
            self.mend()

        threading.Thread(target=blip, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if self._cut.is_set():
                if self._refuse:
                    client.close()
                continue  # else accepted, never answered
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # the server is gone: so is this connection
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b, to_server in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, to_server), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, to_server: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if to_server:
                    self._spend(len(data))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.close()
