"""Test helpers, usable as a pytest plugin: ``pytest_plugins = ["messagebus.testing"]``.

Fixtures:

- ``messagebus_capture``: a ``Captured`` that records the messages handed to
  the bus and the events stored in this test;
- ``messagebus_deliver``: database access, and after-commit delivery as soon
  as each outermost unit of work ends, although the test's transaction never
  commits;
- ``messagebus_registry``: the registry, restored after the test, so a test
  may register handlers of its own;
- ``messagebus_dependencies``: ``override(name=value)``, undone after the test.

The same things work as context managers outside pytest: ``capture_messages``,
``deliver_on_commit``, ``registry.temporary`` and ``dependencies.override``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from django.db import DEFAULT_DB_ALIAS, connections

from . import message_bus, outbox
from .dependencies import dependencies
from .messages import Command, Event, Message
from .registry import Registry, registry
from .unit_of_work import UnitOfWork

M = TypeVar("M", bound=Message)


@dataclass
class Captured:
    handled: list[Message] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def commands(self) -> list[Command]:
        return [m for m in self.handled if isinstance(m, Command)]

    def published(self, event_type: type[M]) -> list[M]:
        return [e for e in self.events if isinstance(e, event_type)]

    def assert_published(self, event_type: type[M], **fields: Any) -> M:
        """The one event of ``event_type`` with these field values; fail otherwise."""
        return _one(self.published(event_type), event_type, fields, "published")

    def assert_not_published(self, event_type: type[Event]) -> None:
        found = self.published(event_type)
        assert not found, f"expected no {event_type.__name__}, got {found}"

    def assert_handled(self, command_type: type[M], **fields: Any) -> M:
        """The one command of ``command_type`` with these field values; fail otherwise."""
        commands = [m for m in self.handled if isinstance(m, command_type)]
        return _one(commands, command_type, fields, "handled")


def _one(found: list[M], cls: type[M], fields: dict[str, Any], verb: str) -> M:
    matching = [m for m in found if all(getattr(m, k, object()) == v for k, v in fields.items())]
    wanted = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
    assert matching, f"no {wanted} was {verb}; {verb}: {found}"
    assert len(matching) == 1, f"{len(matching)} {wanted} were {verb}: {matching}"
    return matching[0]


@contextmanager
def capture_messages() -> Iterator[Captured]:
    """Record messages handed to the bus and events stored, inside the block."""
    captured = Captured()
    message_bus.observers.append(captured.handled.append)
    outbox.observers.append(captured.events.append)
    try:
        yield captured
    finally:
        message_bus.observers.remove(captured.handled.append)
        outbox.observers.remove(captured.events.append)


@contextmanager
def deliver_on_commit() -> Iterator[None]:
    """Run after-commit work when each outermost unit of work ends.

    A test inside a transaction (pytest-django's ``db``) never commits, so
    ``transaction.on_commit`` callbacks would never run. Inside this block,
    those registered during an outermost unit of work run as it ends, as they
    would after a real commit.
    """
    enter, exit_ = UnitOfWork.__enter__, UnitOfWork.__exit__
    marks: dict[int, int] = {}

    def entering(uow: UnitOfWork) -> UnitOfWork:
        result = enter(uow)
        if uow.parent is None:
            marks[id(uow)] = len(connections[uow.using or DEFAULT_DB_ALIAS].run_on_commit)
        return result

    def exiting(uow: UnitOfWork, *exc_info: Any) -> None:
        exit_(uow, *exc_info)
        mark = marks.pop(id(uow), None)
        connection = connections[uow.using or DEFAULT_DB_ALIAS]
        if mark is None or exc_info[0] is not None or not connection.in_atomic_block:
            return
        callbacks = connection.run_on_commit[mark:]
        del connection.run_on_commit[mark:]
        for _, callback, *_ in callbacks:
            callback()

    UnitOfWork.__enter__ = entering  # type: ignore[method-assign]
    UnitOfWork.__exit__ = exiting  # type: ignore[method-assign]
    try:
        yield
    finally:
        UnitOfWork.__enter__, UnitOfWork.__exit__ = enter, exit_  # type: ignore[method-assign]


@pytest.fixture
def messagebus_capture() -> Iterator[Captured]:
    with capture_messages() as captured:
        yield captured


@pytest.fixture
def messagebus_deliver(db: None) -> Iterator[None]:
    with deliver_on_commit():
        yield


@pytest.fixture
def messagebus_registry() -> Iterator[Registry]:
    with registry.temporary() as temporary:
        yield temporary


@pytest.fixture
def messagebus_dependencies() -> Iterator[Callable[..., None]]:
    with ExitStack() as stack:
        yield lambda **values: stack.enter_context(dependencies.override(**values))
