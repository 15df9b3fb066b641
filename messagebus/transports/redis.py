"""Redis pub/sub, as the book's services use it: plain channel names, JSON bodies.

Pub/sub carries a body and nothing else, so the body is the event's fields,
exactly what the book's clients read; the message id, type and correlation
id stay in the outbox (and in this process's log), not on the wire.
"""

from __future__ import annotations

import redis

from ..envelope import Envelope
from . import body

TIMEOUT = 5.0  # seconds to connect, or to wait for an answer


class RedisTransport:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )

    def publish(self, channel: str, envelope: Envelope) -> None:
        self.client.publish(channel, body(envelope))
