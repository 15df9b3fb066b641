"""RabbitMQ through kombu: one durable topic exchange, the channel as routing key.

Messages are persistent and confirmed by the broker before ``publish``
returns; the message id, type and correlation id travel as AMQP properties,
the causation id as a header.
"""

from __future__ import annotations

import threading

from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer

from ..envelope import Envelope
from . import body

EXCHANGE = Exchange("messagebus", type="topic", durable=True)
TIMEOUT = 5.0  # seconds to connect, or to wait for the broker's confirmation


class AmqpTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()  # a connection per thread: kombu's are not shared

    def publish(self, channel: str, envelope: Envelope) -> None:
        self._producer().publish(
            body(envelope),
            exchange=EXCHANGE,
            routing_key=channel,
            declare=[EXCHANGE],
            delivery_mode="persistent",
            content_type="application/json",
            content_encoding="utf-8",
            message_id=str(envelope.id),
            type=envelope.type,
            correlation_id=str(envelope.correlation_id),
            headers={"causation_id": str(envelope.causation_id or "")},
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0.2},
            timeout=TIMEOUT,
        )

    def _producer(self) -> Producer:
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            connection = Connection(
                self.url, connect_timeout=TIMEOUT, transport_options={"confirm_publish": True}
            )
            producer = self._local.producer = Producer(connection)
        return producer
