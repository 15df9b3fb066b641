"""The outbox: each event stored once, with one pending delivery per handler."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.utils import timezone

from ..core.envelope import Envelope
from ..core.messages import Event
from ..core.registry import Handler, registry
from ..observe import logs, tracing
from ..wording import plural
from . import sql
from .reference import Reference

logger = logs.get_logger(__name__)

PRUNE_CHUNK = 20_000  # rows a transaction deletes: short transactions, short locks

# Called with each event stored, and its database (messagebus.testing captures with it).
observers: list[Callable[[Event, str], None]] = []


def prunable(using: str, before: dt.datetime) -> tuple[int, int]:
    """How many deliveries and events ``prune`` would delete (its rule, counted)."""
    return sql.prunable(using, before)


def prune(using: str, before: dt.datetime, *, chunk: int = PRUNE_CHUNK) -> tuple[int, int]:
    """Delete deliveries done or discarded before ``before``, and events left without any."""
    return sql.prune(using, before, chunk)


def store(
    event: Event,
    using: str,
    *,
    handlers: Sequence[Handler] | None = None,
    now: dt.datetime | None = None,
    **delivery: Any,
) -> list[Reference]:
    """Write ``event`` (stored ``now``) and one delivery per handler (default: each of its
    handlers) in the current transaction; ``delivery``: ``due``, ``priority``, ``queue``,
    ``wake`` (``sql.store``)."""
    if handlers is None:
        handlers = registry.event_handlers(type(event))
    envelope = Envelope.of(event, tracing.stored(event))
    sql.store(
        using, envelope.id, envelope.type, envelope.payload, envelope.correlation_id,
        envelope.causation_id, envelope.trace, [h.name for h in handlers], now or timezone.now(),
        **delivery,
    )  # fmt: skip
    if observers:
        for observer in observers:
            observer(event, using)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Stored %s for %s", event, plural(len(handlers), "handler"))
    return [Reference(using, envelope.id, h.name, envelope) for h in handlers]
