"""The outbox: events stored with their deliveries, and read back as jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import F
from django.utils import timezone

from . import conf, sql
from .exceptions import MessageDecodeError
from .messages import Event, message_class, message_type_name
from .models import Delivery, DeliveryQuerySet, StoredEvent
from .registry import Handler, registry
from .serialization import from_dict, to_dict

logger = logging.getLogger(__name__)

# Called with each event stored, and its database (messagebus.testing captures with it).
observers: list[Callable[[Event, str], None]] = []


@dataclass
class Job:
    """One delivery to run: the decoded event and the handler it goes to.

    A delivery is identified by (event, handler); ``runs`` counts its runs so far.
    """

    event: Event
    handler: Handler
    using: str
    # Runs before this one; and whether a claim has already counted this one.
    runs: int = 0
    counted: bool = False
    # False: one call, no tenacity retries (a sweep in someone's request).
    retries: bool = True

    def __str__(self) -> str:
        return f"delivery of {self.event} to {self.handler}"

    def rows(self) -> DeliveryQuerySet:
        """This delivery's row, while it is pending."""
        return (
            Delivery.objects.using(self.using)
            .pending()
            .filter(event_id=self.event.message_id, handler=self.handler.name)
        )


def store(event: Event, using: str) -> list[Job]:
    """Write ``event`` and one delivery per handler in the current transaction."""
    handlers = registry.event_handlers(type(event))
    type_name = message_type_name(type(event))
    sql.store(
        using, event.message_id, type_name, to_dict(event),
        # A message whose own __post_init__ skipped Message's starts a chain.
        event.correlation_id or event.message_id,
        event.causation_id, [h.name for h in handlers], timezone.now(),
    )  # fmt: skip
    if observers:
        for observer in observers:
            observer(event, using)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Stored %s for %d handler(s)", event, len(handlers))
    return [Job(event, h, using) for h in handlers]


def decode(row: StoredEvent) -> Event:
    cls = message_class(row.type)
    if cls is None or not issubclass(cls, Event):
        raise MessageDecodeError(f"no event class is registered under the type {row.type!r}")
    event: Event = from_dict(
        cls,
        row.payload,
        message_id=row.id,
        correlation_id=row.correlation_id,
        causation_id=row.causation_id,
    )
    return event


def job_for(delivery: Delivery, *, counted: bool = False) -> Job | None:
    """The job for a stored delivery, or None after marking it dead if it can't run."""
    if delivery.status != Delivery.Status.PENDING:
        return None
    try:
        event = decode(delivery.event)
    except MessageDecodeError as exc:
        _dead_on_arrival(delivery, f"cannot decode the event: {exc}")
        return None
    handler = registry.event_handler(type(event), delivery.handler)
    if handler is None:
        _dead_on_arrival(
            delivery, f"no handler {delivery.handler} is registered for {delivery.event.type}"
        )
        return None
    using = delivery._state.db or DEFAULT_DB_ALIAS
    runs = delivery.runs - 1 if counted else delivery.runs
    return Job(event, handler, using, runs, counted=counted)


def jobs(rows: Iterable[Delivery], *, counted: bool = False, retries: bool = True) -> list[Job]:
    """The jobs for stored deliveries, leaving out (and marking dead) those that can't run."""
    found = [job for job in (job_for(row, counted=counted) for row in rows) if job is not None]
    for job in found:
        job.retries = retries
    return found


def claim(using: str, limit: int, lease: float, overdue: float = 0) -> list[Delivery]:
    """Take up to ``limit`` deliveries due ``overdue`` seconds ago, for ``lease`` seconds.

    On PostgreSQL the rows are picked with FOR UPDATE SKIP LOCKED, so workers
    never wait on each other; on SQLite writers take turns. A lapsed lease
    only makes a delivery due again: the claim in ``executors._attempt`` still
    keeps two processes from both completing it. Each claim counts a run, so
    a delivery whose runs never finish (its process dies) ends dead too.
    """
    now = timezone.now()
    deliveries = Delivery.objects.using(using)
    with transaction.atomic(using=using):
        rows = list(
            deliveries.due(now - timedelta(seconds=overdue))
            .select_related("event")
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("next_attempt_at", "id")[:limit]
        )
        taken = []
        for row in rows:
            if row.runs >= conf.settings.MAX_DELIVERIES:
                reason = f"{row.runs} runs started and none finished: did its process die?"
                _dead_on_arrival(row, reason)
            else:
                taken.append(row)
                row.runs += 1
        deliveries.filter(pk__in=[row.pk for row in taken]).update(
            next_attempt_at=now + timedelta(seconds=lease), runs=F("runs") + 1
        )
    return rows


def release(using: str, rows: list[Delivery]) -> None:
    """Hand back claimed deliveries that were not run (a worker stopping): due, uncounted."""
    Delivery.objects.using(using).pending().filter(pk__in=[r.pk for r in rows]).update(
        next_attempt_at=timezone.now(), runs=F("runs") - 1
    )


def _dead_on_arrival(delivery: Delivery, reason: str) -> None:
    delivery.status = Delivery.Status.DEAD
    Delivery.objects.using(delivery._state.db).filter(pk=delivery.pk).update(
        status=Delivery.Status.DEAD, last_error=reason, finished_at=timezone.now()
    )
    event = delivery.event
    logger.error(
        "Dead: delivery %s of %s %s (correlation %s) to %s: %s",
        delivery.pk,
        event.type,
        event.id,
        event.correlation_id,
        delivery.handler,
        reason,
    )
