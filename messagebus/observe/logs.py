"""Log records about a message carry it as fields, for a JSON formatter to emit as keys.

While the bus handles a message (a command, or an event's delivery, its
bookkeeping included), records from messagebus's loggers get, in their
``extra``: ``message_type``, ``message_id``, ``correlation_id`` and, for a
handler's work, ``handler``. ``MessageFields`` adds the same to records of any
logger (a handler's own lines) when set on a logging handler:

    LOGGING["filters"] = {"message": {"()": "messagebus.observe.logs.MessageFields"}}
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

from django.db import InterfaceError, OperationalError

from ..core.messages import Command, Message, Query, current_message, message_type_name
from ..core.registry import registry
from ..exceptions import BrokerUnreachable, HandlerNotFound

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
    if handler is None and isinstance(message, Command | Query):  # its one handler
        handler = _one_handler(message)
    if handler is not None:
        found["handler"] = handler
    return found


def _one_handler(message: Command | Query) -> str | None:
    try:
        if isinstance(message, Query):
            return registry.query_handler(type(message)).name
        return registry.command_handler(type(message)).name
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


# A server that cannot be reached: the error's line says it all, its traceback (chained
# through the driver's) is noise. psycopg's own, outside Django, when it is installed.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, ConnectionError, TimeoutError, socket.gaierror,
    BrokerUnreachable,
)  # fmt: skip


def tells_more(exc: BaseException) -> bool:
    """Whether ``exc``'s traceback tells a reader more than its first line: not when it, or
    an error it was raised from, says a server cannot be reached."""
    psycopg = sys.modules.get("psycopg")
    unreachable = (*UNREACHABLE, psycopg.OperationalError) if psycopg else UNREACHABLE
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, unreachable):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


def stack_once(exc: BaseException, failures: int) -> bool:
    """Whether a loop waiting out an outage logs ``exc``'s traceback on try ``failures``:
    on the first only, and only when it tells more than the line."""
    return failures == 1 and tells_more(exc)


def ensure_a_handler() -> None:
    """In a project that configures no logging (neither the ``messagebus`` logger nor the
    root one has a handler), the bus's INFO lines would vanish: Python's last resort prints
    warnings only. Give ``messagebus`` a handler of its own then, to stderr, from INFO up.
    Any LOGGING that gives either logger a handler stays in charge."""
    bus = logging.getLogger("messagebus")
    if bus.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    bus.addHandler(handler)
    if bus.level == logging.NOTSET:
        bus.setLevel(logging.INFO)
