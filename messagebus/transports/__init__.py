"""Brokers that carry messages to other services, chosen by MESSAGEBUS["EXTERNAL_URL"].

A transport is a small class with ``publish(channel, envelope)``: ``redis://``
URLs get Redis pub/sub, ``amqp://`` ones RabbitMQ through kombu. Another
broker (Kafka, NATS) is another class with the same method, built from its
URL, and a line in ``SCHEMES``: the bus does not change.
"""

from __future__ import annotations

import json
import threading
from typing import Protocol, cast

from django.utils.module_loading import import_string

from .. import conf
from ..envelope import Envelope
from ..exceptions import ConfigurationError

SCHEMES = {
    "redis": "messagebus.transports.redis.RedisTransport",
    "rediss": "messagebus.transports.redis.RedisTransport",
    "amqp": "messagebus.transports.amqp.AmqpTransport",
    "amqps": "messagebus.transports.amqp.AmqpTransport",
}


class Transport(Protocol):
    def publish(self, channel: str, envelope: Envelope) -> None:
        """Put ``envelope`` on ``channel``; return once the broker has it, else raise."""


_built: dict[str, Transport] = {}
_lock = threading.Lock()


def get() -> Transport | None:
    """The transport of MESSAGEBUS["EXTERNAL_URL"] (built once); None if it is unset."""
    url = conf.settings.EXTERNAL_URL
    if not url:
        return None
    with _lock:
        if url not in _built:
            scheme = url.split(":", 1)[0]
            if scheme not in SCHEMES:
                raise ConfigurationError(
                    f"MESSAGEBUS['EXTERNAL_URL'] {url!r}: no transport for {scheme!r}"
                )
            _built[url] = cast(Transport, import_string(SCHEMES[scheme])(url))
        return _built[url]


def body(envelope: Envelope) -> bytes:
    """What goes on the wire: the message's own fields, as JSON."""
    return json.dumps(envelope.payload, separators=(",", ":")).encode()
