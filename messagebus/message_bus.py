"""The message bus: ``bus.handle(message)``.

A command runs its one handler inside a unit of work and returns the
handler's result; its error is logged and re-raised. A unit of work that
loses a race with another transaction (a serialization failure or deadlock
on PostgreSQL, or a ``ConcurrencyError``) runs again, up to
MESSAGEBUS["COMMAND_RETRIES"] times in all, when it is the outermost one. An event (one arriving
from outside: aggregates record theirs) is stored in a unit of work and
delivered to its handlers after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from . import conf
from .dependencies import dependencies
from .exceptions import CommandRejected, ConcurrencyError, NotAMessage
from .messages import Command, Event, Message, current_message
from .registry import Handler, registry
from .unit_of_work import UnitOfWork

logger = logging.getLogger(__name__)

# Called with each message handed to a bus (messagebus.testing captures with it).
observers: list[Callable[[Message], None]] = []


class MessageBus:
    """The bus (``messagebus.bus``); handlers that take ``bus`` get it."""

    def handle(self, message: Message, *, using: str | None = None) -> Any:
        """Handle a command (returning its result) or publish an event."""
        if observers:
            for observer in observers:
                observer(message)
        if not isinstance(message, Command):
            return self._publish(message, using)
        handler = registry.command_handler(type(message))
        token = current_message.set(message)
        try:
            result = self._run(handler, message, using)
        except CommandRejected as exc:
            logger.info("Rejected %s: %s", message, exc)
            raise
        except Exception:
            logger.exception("Handler %s failed on %s", handler, message)
            raise
        finally:
            current_message.reset(token)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Handled %s with %s", message, handler)
        return result

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
                nested = connections[using or DEFAULT_DB_ALIAS].in_atomic_block
                if nested or run >= runs or not _lost_a_race(exc):
                    raise
                run += 1
                logger.warning("Running %s again (run %d of %d): %s", command, run, runs, exc)

    def _publish(self, event: Message, using: str | None) -> None:
        if not isinstance(event, Event):
            raise NotAMessage(event)
        with UnitOfWork(using) as uow:
            uow.publish(event)


def _lost_a_race(exc: BaseException) -> bool:
    """A serialization failure (SQLSTATE 40001), a deadlock (40P01), or a ConcurrencyError."""
    if isinstance(exc, ConcurrencyError):
        return True
    return getattr(exc.__cause__, "sqlstate", None) in ("40001", "40P01")


bus = MessageBus()
