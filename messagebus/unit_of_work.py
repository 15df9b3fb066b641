"""Unit of work: a ``transaction.atomic`` block that stores recorded events.

An event recorded inside a unit of work is written to the outbox at once, in
the current transaction, so it shares the fate of the data around it: a
rollback (of the whole transaction or of a nested savepoint) discards it. Its
deliveries are handed to the executor when the transaction commits.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from functools import partial
from types import TracebackType
from typing import Any

from django.db import DEFAULT_DB_ALIAS, router, transaction

from . import executors, outbox
from .exceptions import UnitOfWorkError
from .messages import Event

_current: ContextVar[UnitOfWork | None] = ContextVar("messagebus_unit_of_work", default=None)


class UnitOfWork(transaction.Atomic):
    """``with UnitOfWork():`` is ``transaction.atomic`` (a savepoint if nested)
    that stores the events recorded inside it and delivers them after commit."""

    parent: UnitOfWork | None
    _token: Token[UnitOfWork | None]

    def __init__(self, using: str | None = None) -> None:
        super().__init__(using or DEFAULT_DB_ALIAS, savepoint=True, durable=False)

    def __enter__(self) -> UnitOfWork:  # type: ignore[override]
        super().__enter__()
        self.parent = _current.get()
        self._token = _current.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._token)
        super().__exit__(exc_type, exc, tb)

    def publish(self, event: Event) -> None:
        """Store ``event`` in this transaction; deliver it after commit."""
        executor = executors.get()
        jobs = outbox.store(event, self.using or DEFAULT_DB_ALIAS)
        if jobs and executor.runs_after_commit:
            transaction.on_commit(partial(executor.submit, jobs), using=self.using, robust=True)


def current(using: str | None = None) -> UnitOfWork | None:
    """The innermost active unit of work (on ``using``, if given)."""
    uow = _current.get()
    while uow is not None and using is not None and uow.using != using:
        uow = uow.parent
    return uow


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
        uow = _current.get()
        if uow is None:
            return
        using = _database_of(self)
        if uow.using != using:
            uow = current(using)
            if uow is None:
                raise UnitOfWorkError(
                    f"{type(self).__name__} lives on database {using!r} but no unit "
                    f"of work is open there; open UnitOfWork(using={using!r})"
                )
        uow.publish(event)


def _database_of(instance: Any) -> str:
    state = getattr(instance, "_state", None)
    if state is not None and state.db:
        return str(state.db)
    return str(router.db_for_write(type(instance), instance=instance))
