"""A real HTTP server on 127.0.0.1 that records what is POSTed to it (webhook tests)."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    body: Any
    headers: dict[str, str]
    started: float  # time.time(): comparable across processes
    ended: float = 0.0


@dataclass
class Receiver:
    """``with Receiver(status=200, delay=0) as receiver: receiver.url``."""

    status: int = 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                got = Received(json.loads(self.rfile.read(length)), dict(self.headers), time.time())
                receiver.received.append(got)
                time.sleep(receiver.delay)
                got.ended = time.time()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks/allocations"

    def most_at_once(self) -> int:
        """The most requests that were being answered at one moment."""
        moments = sorted(
            [(r.started, 1) for r in self.received] + [(r.ended, -1) for r in self.received]
        )
        most = now = 0
        for _, step in moments:
            now += step
            most = max(most, now)
        return most


def nothing_listens() -> str:
    """A URL on 127.0.0.1 where no server listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/allocations"
