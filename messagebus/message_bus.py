"""The message bus: ``bus.handle(message)``.

A command runs its one handler inside a unit of work and returns the
handler's result; its error is logged and re-raised. An event (one arriving
from outside: aggregates record theirs) is stored in a unit of work and
delivered to its handlers after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .dependencies import dependencies
from .exceptions import CommandRejected, NotAMessage
from .messages import Command, Event, Message, current_message
from .registry import registry
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
            with UnitOfWork(using) as uow:
                result = dependencies.call(handler, message, uow, self)
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

    def _publish(self, event: Message, using: str | None) -> None:
        if not isinstance(event, Event):
            raise NotAMessage(event)
        with UnitOfWork(using) as uow:
            uow.publish(event)


bus = MessageBus()
