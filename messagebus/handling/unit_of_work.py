"""Unit of work: a ``transaction.atomic`` block that stores recorded events.

An event recorded inside a unit of work is written to the outbox at once, in
the current transaction, so it shares the fate of the data around it: a
rollback (of the whole transaction or of a nested savepoint) discards it. Its
deliveries are handed to the executor when the transaction commits. Its
handlers registered with ``run="in_transaction"`` are called as the unit of
work ends, before it commits, in its transaction: a read right after the
command sees what they wrote, and their failure fails the command.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router

from .. import compat, outbox
from ..core.dependencies import dependencies
from ..core.messages import Event, current_query
from ..core.registry import registry
from ..exceptions import QuerySideEffect, UnitOfWorkError
from ..observe import logs, metrics, tracing
from . import executor

logger = logs.get_logger(__name__)
_joining: ContextVar[bool] = ContextVar("messagebus_joining", default=False)


@contextmanager
def joined() -> Iterator[None]:
    """Units of work opened in the block join the open transaction instead of taking a
    savepoint each: they commit with it, and one that fails rolls it all back.

    For many commands in one transaction that stand or fall together (a batch
    of inbound messages, handled again one by one if any fails).
    """
    token = _joining.set(True)
    try:
        yield
    finally:
        _joining.reset(token)


class UnitOfWork(compat.Atomic):
    """``with UnitOfWork():`` is ``transaction.atomic`` (a savepoint if nested)
    that stores the events recorded inside it and delivers them after commit.

    Like ``atomic`` it keeps its state on the connection, so it may be entered
    again while open (``with uow:`` inside a handler given ``uow`` opens a
    savepoint) and used as a decorator. Aggregates find it there too: among
    the connection's open ``atomic`` blocks, the innermost unit of work.
    """

    def __init__(self, using: str | None = None) -> None:
        # A savepoint when nested (unless joined()), never durable.
        super().__init__(using or DEFAULT_DB_ALIAS, savepoint=not _joining.get(), durable=False)
        # Per entry (it may be entered again while open): events whose handlers run
        # in the transaction, as that entry's block ends.
        self._inline: list[list[Event]] = []

    def __enter__(self) -> UnitOfWork:  # type: ignore[override]
        query = current_query.get()
        if query is not None:
            raise QuerySideEffect(
                f"The handler of the query {type(query).__qualname__} opened a unit of work: "
                "a query answers and changes nothing"
            )
        super().__enter__()
        self._inline.append([])
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None and self._inline[-1]:
            try:
                self.flush()
            except BaseException as failure:
                self._inline.pop()
                super().__exit__(type(failure), failure, failure.__traceback__)
                raise
        self._inline.pop()
        super().__exit__(kind, error, traceback)

    @property
    def alias(self) -> str:
        return self.using or DEFAULT_DB_ALIAS

    def publish(self, event: Event) -> None:
        """Store ``event`` in this transaction; the executor delivers it (after commit),
        and its in-transaction handlers run as this block ends."""
        if not self._inline:
            raise UnitOfWorkError("publish() is for inside the unit of work's block")
        runner = executor.get()
        runner.submit(outbox.store(event, self.alias, wake=executor.wakes(runner)))
        if registry.transaction_handlers(type(event)):
            self._inline[-1].append(event)

    def flush(self) -> None:
        """Call the in-transaction handlers of the events recorded so far in this block
        (and of those they record), in order, now."""
        waiting = self._inline[-1]
        while waiting:
            event = waiting.pop(0)
            for handler in registry.transaction_handlers(type(event)):
                span = tracing.in_transaction(event, handler.name)
                with logs.handling(event, handler.name), span:
                    started = time.perf_counter()
                    dependencies.call(handler, event, self, None)
                    metrics.call(handler.name, time.perf_counter() - started)
                    logger.debug("Handled %s in its transaction with %s", event, handler)


def current(using: str = DEFAULT_DB_ALIAS) -> UnitOfWork | None:
    """The innermost unit of work open on database ``using`` in this thread."""
    for block in reversed(compat.atomic_blocks(connections[using])):
        if isinstance(block, UnitOfWork):
            return block
    return None


def _open_elsewhere() -> list[str]:
    return [
        connection.alias
        for connection in connections.all(initialized_only=True)
        if any(isinstance(block, UnitOfWork) for block in compat.atomic_blocks(connection))
    ]


class Aggregate:
    """Mixin for models that record events: ``class Product(Aggregate, models.Model)``.

    ``record()`` inside a unit of work stores the event with the aggregate's
    transaction. Outside one (a domain unit test) the event is only kept in
    ``self.events``.
    """

    __module__ = "messagebus"  # the path migrations write: where users import it from

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
        elif elsewhere := _open_elsewhere():
            raise UnitOfWorkError(
                f"{type(self).__name__} lives on database {using!r} but the unit of work "
                f"is open on {elsewhere[0]!r}; open UnitOfWork(using={using!r})"
            )
        elif compat.in_atomic_block(connections[using]):
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
