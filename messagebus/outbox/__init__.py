"""The outbox: each event stored once, with one pending delivery per handler; a message
scheduled for later (``store_due``) the same way, its deliveries due at its time."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.db.models import Min, Q
from django.utils import timezone

from ..core.envelope import Envelope
from ..core.messages import Command, Event, Message
from ..core.policy import WAITING_FOR_HANDLER
from ..core.registry import Handler, registry
from ..models import KEY_LENGTH, Delivery
from ..observe import logs, tracing
from ..wording import plural
from . import ordering, sql
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
    names = [h.name for h in handlers]
    refs = _stored(event, using, names, now, **_keys(event, handlers, using), **delivery)
    if observers:
        for observer in observers:
            observer(event, using)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Stored %s for %s", event, plural(len(handlers), "handler"))
    return refs


def store_due(
    message: Message,
    using: str,
    due: dt.datetime,
    *,
    sender: tuple[str, str] | None = None,
    **delivery: Any,
) -> list[Reference]:
    """Write ``message`` in the current transaction, its deliveries due at ``due``: an
    event's, one per handler; a command's, one, to its handler (``HandlerNotFound``
    if it has none), or to the process manager that sends it, ``sender``: (its name, the
    instance's key), whose steps run it (``registry.register_process``). ``delivery``: as
    for ``store``."""
    keyed: dict[str, Any] = {}
    if sender is not None:
        names, keyed = [sender[0]], {"keys": [sender[1][:KEY_LENGTH]]}
    elif isinstance(message, Command):
        names = [registry.command_handler(type(message)).name]
    else:
        handlers = registry.event_handlers(type(message))
        names, keyed = [h.name for h in handlers], _keys(message, handlers, using)
    refs = _stored(message, using, names, None, due=due, **keyed, **delivery)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Stored %s, due at %s", message, due.isoformat())
    return refs


def _stored(
    message: Message, using: str, handlers: list[str], now: dt.datetime | None, **delivery: Any
) -> list[Reference]:
    envelope = Envelope.of(message, tracing.stored(message))
    sql.store(
        using, envelope.id, envelope.type, envelope.payload, envelope.correlation_id,
        envelope.causation_id, envelope.trace, handlers, now or timezone.now(), **delivery,
    )  # fmt: skip
    return [Reference(using, envelope.id, name, envelope) for name in handlers]


def _keys(message: Message, handlers: Sequence[Handler], using: str) -> dict[str, Any]:
    """Each handler's key for ``message``, as its delivery keeps it (``keys``), and the
    ordered handlers' next numbers for theirs (``sequences``), taken now."""
    keys = [h.key_of(message)[:KEY_LENGTH] for h in handlers]
    ordered = [(h.name, key) for h, key in zip(handlers, keys, strict=True) if h.ordered]
    if not ordered:
        return {"keys": keys}
    numbers = dict(zip(ordered, ordering.sequences(using, ordered), strict=True))
    numbered = [numbers.get((h.name, key)) for h, key in zip(handlers, keys, strict=True)]
    return {"keys": keys, "sequences": numbered}


def scheduled(now: dt.datetime) -> Q:
    """A delivery scheduled for later: pending, never called, not due before a time still
    to come (and not one that waits for a process that has its handler)."""
    later = Q(status="pending", lease_until__isnull=True, attempts=0, next_attempt_at__gt=now)
    return later & ~Q(last_error__startswith=WAITING_FOR_HANDLER)


def next_due(using: str) -> dt.datetime | None:
    """When the next delivery not due yet falls due (a scheduled one, or a retry)."""
    rows = (
        Delivery.objects.using(using)
        .pending()
        .filter(lease_until__isnull=True, next_attempt_at__gt=timezone.now())
    )
    found: dt.datetime | None = rows.aggregate(at=Min("next_attempt_at"))["at"]
    return found
