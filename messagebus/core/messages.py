"""Commands and events: frozen dataclasses with an identity and a lineage.

Subclass ``Command``, ``Event`` or ``Query`` and decorate with ``@dataclass(frozen=True)``.
Every message has a ``message_id``; ``correlation_id`` names the chain it
belongs to (a request's first command starts one) and ``causation_id`` the
message whose handling created it. Both are filled in from the message being
handled when the new message is created, so a handler never passes them on.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ClassVar

from django.apps import apps

# The message whose handler is running in this context (thread or task).
current_message: ContextVar[Message | None] = ContextVar("messagebus_current_message", default=None)
# The query whose handler is running in this context: while set, nothing may be sent.
current_query: ContextVar[Query | None] = ContextVar("messagebus_current_query", default=None)

_classes: list[type[Message]] = []
_type_names: dict[type[Message], str] = {}
_by_name: dict[str, type[Message]] = {}


@dataclass(frozen=True, kw_only=True)
class Message:
    message_id: uuid.UUID = field(default_factory=uuid.uuid4, compare=False, repr=False)
    correlation_id: uuid.UUID | None = field(default=None, compare=False, repr=False)
    causation_id: uuid.UUID | None = field(default=None, compare=False, repr=False)

    # Overrides the stored type name ("app_label.ClassName") when set.
    type_name: ClassVar[str | None] = None
    # The field whose value orders its deliveries: each handler of it sees the messages
    # of one value one at a time, in the order they were committed (docs/ordering.md).
    ordering_key: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _classes.append(cls)

    def __post_init__(self) -> None:
        if self.correlation_id is None:
            parent = current_message.get()
            if parent is None:
                object.__setattr__(self, "correlation_id", self.message_id)
            else:
                object.__setattr__(self, "correlation_id", parent.correlation_id)
                if self.causation_id is None:
                    object.__setattr__(self, "causation_id", parent.message_id)

    def __str__(self) -> str:
        return (
            f"{message_type_name(type(self))} {self.message_id} (correlation {self.correlation_id})"
        )


@dataclass(frozen=True, kw_only=True)
class Command(Message):
    """An intention: exactly one handler, run in a unit of work, errors raised."""


@dataclass(frozen=True, kw_only=True)
class Event(Message):
    """A fact: any number of handlers, run after commit, errors logged and retried."""


@dataclass(frozen=True, kw_only=True)
class Query(Message):
    """A question: exactly one handler, called at once in the caller with no unit of
    work, its answer returned; never stored, retried or delivered, and it sends nothing."""


BASES = (Message, Command, Event, Query)


def message_type_name(cls: type[Message]) -> str:
    """The stable name a message type is stored under: ``app_label.ClassName``."""
    try:
        return _type_names[cls]
    except KeyError:
        pass
    name = cls.__dict__.get("type_name")
    if not name:
        app = apps.get_containing_app_config(cls.__module__)
        prefix = app.label if app is not None else cls.__module__
        name = f"{prefix}.{cls.__name__}"
    _type_names[cls] = name
    return name


def message_classes() -> list[type[Message]]:
    """Every concrete message class defined so far (bases excluded)."""
    return [cls for cls in _classes if cls not in BASES]


def message_class(type_name: str) -> type[Message] | None:
    """The class stored under ``type_name``; the newest wins if two claim it."""
    global _by_name
    if type_name not in _by_name:  # a class defined since: look again
        _by_name = {message_type_name(cls): cls for cls in message_classes()}
    return _by_name.get(type_name)
