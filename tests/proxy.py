"""A TCP proxy a test puts between the code and a server, to cut the network and mend it."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {
    "postgres": 5432, "postgresql": 5432, "amqp": 5672, "redis": 6379, "redis+stream": 6379,
    "nats": 4222,
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

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if self._cut.is_set():
                if self._refuse:
                    client.close()
                continue  # else accepted, never answered
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.close()
