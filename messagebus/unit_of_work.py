"""Unit of work: a ``transaction.atomic`` block that stores recorded events.

An event recorded inside a unit of work is written to the outbox at once, in
the current transaction, so it shares the fate of the data around it: a
rollback (of the whole transaction or of a nested savepoint) discards it. Its
deliveries are handed to the executor when the transaction commits.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from functools import partial
from types import TracebackType
from typing import Any

from django.db import DEFAULT_DB_ALIAS, router, transaction

from . import executors, outbox
from .exceptions import UnitOfWorkError
from .messages import Event

logger = logging.getLogger(__name__)

# The units of work open in this context (thread or task), innermost last.
_open: ContextVar[tuple[UnitOfWork, ...]] = ContextVar("messagebus_units_of_work", default=())


class UnitOfWork(transaction.Atomic):
    """``with UnitOfWork():`` is ``transaction.atomic`` (a savepoint if nested)
    that stores the events recorded inside it and delivers them after commit.

    Like ``atomic``, it may be entered again while open (``with uow:`` inside
    a handler that was given ``uow``): that opens a savepoint.
    """

    def __init__(self, using: str | None = None) -> None:
        super().__init__(using or DEFAULT_DB_ALIAS, savepoint=True, durable=False)

    def __enter__(self) -> UnitOfWork:  # type: ignore[override]
        super().__enter__()
        _open.set((*_open.get(), self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            _open.set(_open.get()[:-1])
        finally:
            super().__exit__(exc_type, exc, tb)

    def _recreate_cm(self) -> UnitOfWork:
        """``@UnitOfWork()`` as a decorator: a fresh one for each call."""
        return UnitOfWork(self.using)

    @property
    def alias(self) -> str:
        return self.using or DEFAULT_DB_ALIAS

    def publish(self, event: Event) -> None:
        """Store ``event`` in this transaction; deliver it after commit."""
        executor = executors.get()
        jobs = outbox.store(event, self.alias)
        if jobs and executor.runs_after_commit:
            transaction.on_commit(partial(executor.submit, jobs), using=self.alias, robust=True)


def current(using: str | None = None) -> UnitOfWork | None:
    """The innermost open unit of work (on ``using``, if given)."""
    for uow in reversed(_open.get()):
        if using is None or uow.alias == using:
            return uow
    return None


class Aggregate:
    """Mixin for models that record events: ``class Product(Aggregate, models.Model)``.

    ``record()`` inside a unit of work stores the event with the aggregate's
    transaction. Outside one (a domain unit test) the event is only kept in
    ``self.events``.
    """

    @property
    def events(self) -> list[Event]:
        """Events this instance recorded, oldest first."""
        events: list[Event] = self.__dict__.setdefault("_messagebus_events", [])
        return events

    def record(self, event: Event) -> None:
        self.events.append(event)
        using = _database_of(self)
        uow = current(using)
        if uow is not None:
            uow.publish(event)
        elif _open.get():
            raise UnitOfWorkError(
                f"{type(self).__name__} lives on database {using!r} but no unit "
                f"of work is open there; open UnitOfWork(using={using!r})"
            )
        elif transaction.get_connection(using).in_atomic_block:
            logger.warning(
                "%s recorded %s outside a unit of work: it is not stored or delivered "
                "(use bus.handle(), or open messagebus.UnitOfWork())",
                type(self).__name__,
                event,
            )


def _database_of(instance: Any) -> str:
    state = getattr(instance, "_state", None)
    if state is not None and state.db:
        return str(state.db)
    return str(router.db_for_write(type(instance), instance=instance))
