"""Messages sent later: ``bus.schedule(message, at= | after=)``, ``bus.cancel(id)``, and the
ticks of periodic schedules (``fire``).

A scheduled message is stored in the outbox in the caller's transaction, as an
event is, its deliveries not due before its time: an event's one per handler, a
command's one to its handler, which hands it to ``bus.handle`` in the delivery's
unit of work. From then on the one engine runs them as any delivery: claimed when
due, retried, dead-lettered, replayed from the admin. Nothing is handed to the
executor at commit (it would run them at once); on PostgreSQL the commit wakes the
workers, whose wait ends at the next delivery due.
"""

from __future__ import annotations

import datetime as dt
import uuid

from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.db.models import Max, OuterRef, QuerySet, Subquery
from django.utils import timezone

from .. import outbox
from ..core import periodic
from ..core.messages import Command, Event, Message, Query
from ..exceptions import NotAMessage, ScheduleError
from ..models import ScheduleTick
from ..observe import logs
from ..outbox import sql, states
from . import executor
from .unit_of_work import UnitOfWork

logger = logs.get_logger(__name__)


def due_time(at: dt.datetime | None, after: dt.timedelta | None) -> dt.datetime:
    """The time ``at=`` or ``after=`` (one of them) names."""
    if (at is None) == (after is None):
        raise ScheduleError("schedule() takes one of at= (a datetime) and after= (a timedelta)")
    if after is not None:
        if not isinstance(after, dt.timedelta):
            raise ScheduleError(f"after= takes a timedelta, not {after!r}")
        return timezone.now() + after
    if not isinstance(at, dt.datetime) or timezone.is_naive(at):
        raise ScheduleError(f"at= takes a datetime with a time zone, not {at!r}")
    return at


def schedule(
    message: Message,
    *,
    at: dt.datetime | None = None,
    after: dt.timedelta | None = None,
    using: str | None = None,
) -> uuid.UUID:
    """Store ``message`` to be sent at ``at`` (or ``after`` from now), in the current
    transaction (none: at once); its id, for ``cancel``. A time past is due at once."""
    if isinstance(message, Query):
        raise ScheduleError(f"{type(message).__qualname__} is a query: it is answered when asked")
    if not isinstance(message, Command | Event):
        raise NotAMessage(message)
    when = due_time(at, after)
    runner = executor.get()
    due_now = when <= timezone.now()
    with UnitOfWork(using) as uow:
        refs = outbox.store_due(message, uow.alias, when, wake=due_now and executor.wakes(runner))
        if due_now:
            runner.submit(refs)  # due already: as if published now
        else:
            executor.committing(uow.alias, _wake_workers)
    return message.message_id


def cancel(message_id: uuid.UUID | str, *, using: str | None = None) -> bool:
    """Cancel a scheduled message's deliveries that have not started; False if none was
    left to cancel (it ran, is running, was cancelled, or never was)."""
    try:
        message = message_id if isinstance(message_id, uuid.UUID) else uuid.UUID(message_id)
    except (TypeError, ValueError, AttributeError):
        raise ScheduleError(f"not a message id: {message_id!r}") from None
    cancelled = states.cancelled(using or DEFAULT_DB_ALIAS, message)
    if cancelled:
        logger.info("Cancelled message %s", message)
    return bool(cancelled)


def fire(
    schedule: periodic.Periodic, tick: dt.datetime, send: bool, using: str, by: str = ""
) -> bool:
    """Record ``tick`` of ``schedule`` and, if ``send``, store its message, due at once,
    in one transaction: whichever process records a tick first sends it; False for the
    others, which find it recorded (a unique row per schedule and tick)."""
    with transaction.atomic(using=using):
        message = schedule.message(tick) if send else None
        try:
            with transaction.atomic(using=using):
                ScheduleTick.objects.using(using).create(
                    name=schedule.name, tick_at=tick, recorded_by=by,
                    message_id=message.message_id if message else None,
                )  # fmt: skip
        except IntegrityError:
            return False
        if message is not None:
            outbox.store_due(message, using, timezone.now())
            executor.committing(using, _wake_workers)
    if message is None:
        logger.warning("Skipped the missed tick %s of %s", tick.isoformat(), schedule.name)
    else:
        logger.info("Tick %s of %s: sent %s", tick.isoformat(), schedule.name, message)
    return True


def last_ticks(using: str) -> dict[str, dt.datetime]:
    """The last tick recorded of each periodic schedule, by name."""
    rows = ScheduleTick.objects.using(using).values("name").order_by()
    return {row["name"]: row["last"] for row in rows.annotate(last=Max("tick_at"))}


def old_ticks(using: str, before: dt.datetime) -> QuerySet[ScheduleTick]:
    """Ticks recorded before ``before``, but each schedule's last (which dates the next)."""
    ticks = ScheduleTick.objects.using(using)
    last = ticks.filter(name=OuterRef("name")).order_by("-tick_at").values("pk")[:1]
    return ticks.filter(tick_at__lt=before).exclude(pk=Subquery(last))


def _wake_workers(using: str, events: set[uuid.UUID]) -> None:
    sql.notify(using)
