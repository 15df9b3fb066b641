"""The message bus: ``bus.handle(message)``, and ``bus.schedule`` / ``bus.cancel`` for later.

A query's one handler is called at once, here, with no unit of work, and its
answer returned; it may ask other queries, but a command, an event or a unit
of work started inside it raises ``QuerySideEffect``.

A command runs its one handler inside a unit of work and returns the
handler's result; its error is logged and re-raised. A unit of work that
loses a race with another transaction (a serialization failure or deadlock
on PostgreSQL, a deadlock on MariaDB or MySQL, or a ``ConcurrencyError``) runs again, up to
MESSAGEBUS["COMMAND_RETRIES"] times in all, when it is the outermost one. An event (one arriving
from outside: aggregates record theirs) is stored in a unit of work and
delivered to its handlers after commit.

``await bus.ahandle(message)`` is the same for async code. Django's
transactions are sync and bound to a thread, so a sync handler's unit of
work runs in the thread Django's async ORM uses (``sync_to_async``), and
the deliveries the inline executor runs after its commit are awaited on the
caller's event loop: async handlers of one event at once. An async command
handler is awaited on the loop, outside any transaction (``bus.handle``
runs it through asgiref's ``async_to_sync``); it does its database work in
commands of its own or in ``sync_to_async`` functions.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from .. import compat, conf
from ..core.dependencies import dependencies
from ..core.messages import (
    Command,
    Event,
    Message,
    Query,
    current_message,
    current_query,
    message_type_name,
)
from ..core.registry import Handler, registry
from ..exceptions import CommandRejected, ConcurrencyError, NotAMessage, QuerySideEffect
from ..observe import logs, metrics, tracing
from . import executor, scheduling
from .unit_of_work import UnitOfWork

logger = logs.get_logger(__name__)

# Called with each message handed to a bus (messagebus.testing captures with it).
observers: list[Callable[[Message], None]] = []


class MessageBus:
    """The bus (``messagebus.bus``); handlers that take ``bus`` get it."""

    def handle(self, message: Message, *, using: str | None = None) -> Any:
        """Handle a command (returning its result), answer a query, or publish an event."""
        _admit(message)
        if not isinstance(message, Command):
            if isinstance(message, Query):
                return self._ask(message)
            return self._publish(message, using)
        handler = registry.command_handler(type(message))
        token = current_message.set(message)  # logs name its handler from it too
        try:
            with tracing.command(message, handler.name):
                if handler.is_async:
                    result = async_to_sync(self._await)(handler, message)
                else:
                    result = self._run(handler, message, using)
        except Exception as exc:
            _failed(handler, message, exc)
            raise
        finally:
            current_message.reset(token)
        metrics.handled(type(message))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Handled %s with %s", message, handler)
        return result

    async def ahandle(self, message: Message, *, using: str | None = None) -> Any:
        """``handle()`` for async code: await it from an async view, task or handler."""
        if isinstance(message, Command | Query):
            handler = _one_handler(message)
            if handler.is_async:
                _admit(message)
                if isinstance(message, Query):
                    return await self._answer(handler, message)
                with logs.handling(message, handler.name), tracing.command(message, handler.name):
                    try:
                        result = await self._await(handler, message)
                    except Exception as exc:
                        _failed(handler, message, exc)
                        raise
                metrics.handled(type(message))
                return result
        async with executor.here():
            return await sync_to_async(self.handle, thread_sensitive=True)(message, using=using)

    def _ask(self, query: Query) -> Any:
        """A query's handler, called here and now; its answer."""
        handler = registry.query_handler(type(query))
        if handler.is_async:
            return async_to_sync(self._answer)(handler, query)
        with _answering(handler, query):
            return dependencies.call(handler, query, None, self)

    async def _answer(self, handler: Handler, query: Query) -> Any:
        """An async query handler, on this loop."""
        with _answering(handler, query):
            return await self._await(handler, query)

    async def _await(self, handler: Handler, message: Command | Query) -> Any:
        """An async command or query handler, on this loop, with no unit of work."""
        if not handler.parameters:
            return await handler.func(message)
        return await handler.func(message, **dependencies.kwargs(handler, None, self))

    def _run(self, handler: Handler, command: Command, using: str | None) -> Any:
        """The handler in a unit of work, run again after losing a race, if outermost."""
        run = 1
        while True:
            try:
                with UnitOfWork(using) as uow:
                    return dependencies.call(handler, command, uow, self)
            except (DatabaseError, ConcurrencyError) as exc:
                runs = conf.settings.COMMAND_RETRIES
                # Only a whole transaction runs again, not a savepoint inside another.
                nested = compat.in_atomic_block(connections[using or DEFAULT_DB_ALIAS])
                if nested or run >= runs or not _lost_a_race(exc):
                    raise
                run += 1
                logger.warning("Running %s again (run %d of %d): %s", command, run, runs, exc)

    def schedule(
        self,
        message: Message,
        *,
        at: dt.datetime | None = None,
        after: dt.timedelta | None = None,
        using: str | None = None,
    ) -> uuid.UUID:
        """Send a command or an event later: at ``at`` (aware), or ``after`` from now.

        Stored in the current transaction (a rollback: never sent; none open: at once);
        returns its id, for ``cancel``. An event's handlers, or a command's one handler
        in a unit of work, run from then on as deliveries, with their retries."""
        return scheduling.schedule(message, at=at, after=after, using=using)

    def cancel(self, message_id: uuid.UUID | str, *, using: str | None = None) -> bool:
        """Cancel a scheduled message before it runs; False once it ran or was cancelled."""
        return scheduling.cancel(message_id, using=using)

    def _publish(self, event: Message, using: str | None) -> None:
        if not isinstance(event, Event):
            raise NotAMessage(event)
        with UnitOfWork(using) as uow:
            uow.publish(event)


def _admit(message: Message) -> None:
    """Refuse what a query's handler may not send; show the message to the observers."""
    if current_query.get() is not None:
        _refuse_in_query(message)
    if observers:
        _observe(message)


def _observe(message: Message) -> None:
    for observer in observers:
        observer(message)


def _failed(handler: Handler, message: Command | Query, exc: Exception) -> None:
    rejected = isinstance(exc, CommandRejected)
    outcome = "rejected" if rejected else "failed"
    if isinstance(message, Query):
        metrics.query(message_type_name(type(message)), outcome)
    else:
        metrics.command(message_type_name(type(message)), outcome)
    if rejected:
        logger.info("Rejected %s: %s", message, exc)
    else:
        logger.error("Handler %s failed on %s", handler, message, exc_info=exc)


@contextmanager
def _answering(handler: Handler, query: Query) -> Iterator[None]:
    """A query's handler running: its query current (nothing may be sent), in its span;
    counted as answered once it returns, as failed if it raises."""
    message_token, query_token = current_message.set(query), current_query.set(query)
    try:
        with tracing.query(query, handler.name):
            yield
    except Exception as exc:
        _failed(handler, query, exc)
        raise
    finally:
        current_query.reset(query_token)
        current_message.reset(message_token)
    metrics.answered(type(query))


def _one_handler(message: Command | Query) -> Handler:
    if isinstance(message, Query):
        return registry.query_handler(type(message))
    return registry.command_handler(type(message))


def _refuse_in_query(message: Message) -> None:
    """Inside a query's handler only other queries may be asked."""
    if isinstance(message, Query):
        return
    query = current_query.get()
    kind = "send the command" if isinstance(message, Command) else "publish"
    raise QuerySideEffect(
        f"The handler of the query {type(query).__qualname__} tried to {kind} "
        f"{type(message).__qualname__}: a query answers and changes nothing; "
        "send it from the code that asked the query"
    )


def _lost_a_race(exc: BaseException) -> bool:
    """A serialization failure (SQLSTATE 40001), a deadlock (40P01; MySQL's and MariaDB's
    error 1213, as their drivers give no SQLSTATE), or a ConcurrencyError."""
    if isinstance(exc, ConcurrencyError):
        return True
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) in ("40001", "40P01") or (
        isinstance(cause, Exception) and cause.args[:1] == (MYSQL_DEADLOCK,)
    )


MYSQL_DEADLOCK = 1213  # ER_LOCK_DEADLOCK


bus = MessageBus()
