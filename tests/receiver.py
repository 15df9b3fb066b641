"""A real HTTP server on 127.0.0.1 that records what is POSTed to it (webhook tests)."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    body: Any
    headers: dict[str, str]


@dataclass
class Receiver:
    """``with Receiver(status=200) as receiver: receiver.url``.

    ``hold_until=n`` holds each request until ``n`` are in at once (or ``hold_timeout``
    seconds pass, shorter than the webhook client's own timeout), then answers them all:
    ``receiver.held_together`` says whether they all met. Overlap proved by a meeting, not a
    clock, holds on a machine however busy.
    """

    status: int = 200
    hold_until: int = 0
    hold_timeout: float = 8.0
    received: list[Received] = field(default_factory=list)
    held_together: bool = False

    def __enter__(self) -> Receiver:
        receiver = self
        meeting = threading.Barrier(self.hold_until or 1, timeout=self.hold_timeout)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.received.append(
                    Received(json.loads(self.rfile.read(length)), dict(self.headers))
                )
                if receiver.hold_until:
                    try:
                        meeting.wait()
                    except threading.BrokenBarrierError:
                        pass  # not all in before the timeout: held_together stays False
                    else:
                        receiver.held_together = True
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


def nothing_listens() -> str:
    """A URL on 127.0.0.1 where no server listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/allocations"
