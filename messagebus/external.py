"""Events published to other services through a broker (the book's chapter 11).

An app declares what it publishes, in a module ``external`` that is found as
``handlers`` is::

    # orders/external.py
    messagebus.publishes(OrderPlaced, channel="order_placed")

Publishing is then a delivery like any event handler's, one per event and
channel: it happens after commit, at least once, retried, and dead with the
reason if the broker keeps refusing it. With no MESSAGEBUS["EXTERNAL_URL"],
those deliveries are done without sending anything.
"""

from __future__ import annotations

import logging
from typing import Any

from . import transports
from .envelope import Envelope
from .messages import Event
from .registry import registry

logger = logging.getLogger(__name__)

# Channel names: what Redis and RabbitMQ both take as a channel or a routing key.
CHANNEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")

publications: dict[str, type[Event]] = {}  # channel -> event type


def publishes(event_type: type[Event], channel: str, **options: Any) -> None:
    """Publish each ``event_type`` event on ``channel``, from the outbox.

    ``options`` are the delivery's policy, as for ``@messagebus.handler``.
    """
    if not channel or not set(channel) <= CHANNEL_CHARACTERS:
        raise ValueError(f"{channel!r} is not a channel name (letters, digits, _ - .)")

    def publish(event: Event) -> None:
        transport = transports.get()
        if transport is None:
            logger.debug("Not published (no EXTERNAL_URL): %s on %s", event, channel)
            return
        transport.publish(channel, Envelope.of(event))
        logger.info("Published %s on %s", event, channel)

    registry.register(event_type, publish, name=f"publish:{channel}", **options)
    publications[channel] = event_type
