"""Log records about a message carry it as fields, for a JSON formatter to emit as keys.

While the bus handles a message (a command, or an event's delivery, its
bookkeeping included), records from messagebus's loggers get, in their
``extra``: ``message_type``, ``message_id``, ``correlation_id`` and, for a
handler's work, ``handler``. ``MessageFields`` adds the same to records of any
logger (a handler's own lines) when set on a logging handler:

    LOGGING["filters"] = {"message": {"()": "messagebus.logs.MessageFields"}}
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

from .exceptions import HandlerNotFound
from .messages import Command, Message, current_message, message_type_name
from .registry import registry

FIELDS = ("message_type", "message_id", "correlation_id", "handler")

# The handler the bus runs in this context (thread or task), by its registered name.
current_handler: ContextVar[str | None] = ContextVar("messagebus_current_handler", default=None)


def fields() -> dict[str, str]:
    """The fields of the message handled in this context (none outside one)."""
    message = current_message.get()
    if message is None:
        return {}
    found = of(message)
    handler = current_handler.get()
    if handler is None and isinstance(message, Command):  # a command names its one handler
        handler = _command_handler(type(message))
    if handler is not None:
        found["handler"] = handler
    return found


def _command_handler(cls: type[Message]) -> str | None:
    try:
        return registry.command_handler(cls).name
    except HandlerNotFound:
        return None


def of(message: Message, handler: str | None = None) -> dict[str, str]:
    """A message's fields, for a record about it logged outside its handling."""
    found = {
        "message_type": message_type_name(type(message)),
        "message_id": str(message.message_id),
        "correlation_id": str(message.correlation_id),
    }
    if handler is not None:
        found["handler"] = handler
    return found


class handling:
    """Records logged inside the block are about ``handler`` handling ``message``.

    A class, not a generator: it is entered for every delivery.
    """

    __slots__ = ("handler", "message", "tokens")

    def __init__(self, message: Message, handler: str) -> None:
        self.message, self.handler = message, handler

    def __enter__(self) -> None:
        self.tokens = current_message.set(self.message), current_handler.set(self.handler)

    def __exit__(self, *exc: object) -> None:
        current_handler.reset(self.tokens[1])
        current_message.reset(self.tokens[0])


class MessageLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A module's logger whose records carry the fields of the message being handled."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        found = fields()
        if found:
            kwargs["extra"] = {**found, **(kwargs.get("extra") or {})}
        return msg, kwargs


def get_logger(name: str) -> MessageLogger:
    return MessageLogger(logging.getLogger(name), {})


class MessageFields(logging.Filter):
    """Give every record passing through the fields of the message being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
