"""The outbox: each event stored once, with one pending delivery per handler."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.utils import timezone

from . import sql
from .delivery.reference import Reference
from .envelope import Envelope
from .messages import Event
from .registry import registry

logger = logging.getLogger(__name__)

# Called with each event stored, and its database (messagebus.testing captures with it).
observers: list[Callable[[Event, str], None]] = []


def store(event: Event, using: str) -> list[Reference]:
    """Write ``event`` and one delivery per handler in the current transaction."""
    handlers = registry.event_handlers(type(event))
    envelope = Envelope.of(event)
    sql.store(
        using, envelope.id, envelope.type, envelope.payload, envelope.correlation_id,
        envelope.causation_id, [h.name for h in handlers], timezone.now(),
    )  # fmt: skip
    if observers:
        for observer in observers:
            observer(event, using)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Stored %s for %d handler(s)", event, len(handlers))
    return [Reference(using, envelope.id, h.name, envelope) for h in handlers]
