"""Test helpers for a project's tests: context managers that work anywhere, pytest or not.

- ``capture_messages()``: a ``Captured`` that records the messages handed to the
  bus (commands, queries, events) and the events published (committed) inside
  the block;
- ``deliver_on_commit()``: after-commit work (event delivery) run as a real
  commit would run it, although the test's transaction never commits;
  deliveries run inline (eagerly), whatever MESSAGEBUS["EXECUTOR"] says, as
  Celery's always-eager mode does;
- ``registry.temporary()`` and ``dependencies.override(**values)`` (from
  ``messagebus.registry`` and ``messagebus.dependencies``): handlers and
  dependencies for one block.

``run_due()`` runs every delivery due now, as a worker would, until none is
due: with RETRY_WAIT 0, a failing handler's whole run (each call of a run is
due again at once after the last; a request never waits through them).

The pytest fixtures built on these (``messagebus_capture``, ``messagebus_deliver``,
``messagebus_registry``, ``messagebus_dependencies``) are in ``messagebus.pytest_plugin``:
``pytest_plugins = ["messagebus.pytest_plugin"]``. This module imports nothing of pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, overload

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from . import compat, executors, outbox
from .core.messages import Command, Event, Message, Query
from .delivery.concurrent import drain
from .executors.inline import InlineExecutor
from .handling import message_bus

M = TypeVar("M", bound=Message)


@dataclass
class Captured:
    handled: list[Message] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def commands(self) -> list[Command]:
        return [m for m in self.handled if isinstance(m, Command)]

    @property
    def queries(self) -> list[Query]:
        """The queries asked (``assert_handled`` finds one by its fields too)."""
        return [m for m in self.handled if isinstance(m, Query)]

    def published(self, event_type: type[M]) -> list[M]:
        return [e for e in self.events if isinstance(e, event_type)]

    @overload
    def assert_published(self, event_type: type[M], *, count: None = None, **fields: Any) -> M: ...
    @overload
    def assert_published(self, event_type: type[M], *, count: int, **fields: Any) -> list[M]: ...
    def assert_published(
        self, event_type: type[M], *, count: int | None = None, **fields: Any
    ) -> M | list[M]:
        """The one event of ``event_type`` with these field values; fail otherwise. With
        ``count=n``: exactly n such events, as a list (``count`` is not a field then)."""
        return _matching(self.published(event_type), event_type, fields, "published", count)

    def assert_not_published(self, event_type: type[Event]) -> None:
        found = self.published(event_type)
        assert not found, f"expected no {event_type.__name__}, got {found}"

    @overload
    def assert_handled(self, command_type: type[M], *, count: None = None, **fields: Any) -> M: ...
    @overload
    def assert_handled(self, command_type: type[M], *, count: int, **fields: Any) -> list[M]: ...
    def assert_handled(
        self, command_type: type[M], *, count: int | None = None, **fields: Any
    ) -> M | list[M]:
        """The one message of ``command_type`` with these field values handed to the bus;
        fail otherwise. With ``count=n``: exactly n such, as a list (``count`` is not a field
        then)."""
        commands = [m for m in self.handled if isinstance(m, command_type)]
        return _matching(commands, command_type, fields, "handled", count)


def _matching(
    found: list[M], cls: type[M], fields: dict[str, Any], verb: str, count: int | None
) -> M | list[M]:
    matching = [m for m in found if all(getattr(m, k, object()) == v for k, v in fields.items())]
    wanted = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
    assert matching or count == 0, f"no {wanted} was {verb}; {verb}: {found}"
    expected = 1 if count is None else count
    assert len(matching) == expected, (
        f"{len(matching)} {wanted} were {verb}, not {expected}: {matching}"
        + ("; pass count=N to expect N" if count is None else "")
    )
    return matching if count is not None else matching[0]


@contextmanager
def capture_messages() -> Iterator[Captured]:
    """Record messages handed to the bus, and events as their transaction commits."""
    captured = Captured()

    def stored(event: Event, using: str) -> None:
        transaction.on_commit(partial(captured.events.append, event), using=using)

    message_bus.observers.append(captured.handled.append)
    outbox.observers.append(stored)
    try:
        yield captured
    finally:
        message_bus.observers.remove(captured.handled.append)
        outbox.observers.remove(stored)


@contextmanager
def deliver_on_commit(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Run after-commit work where a real commit would run it.

    A test inside a transaction (pytest-django's ``db``) never commits, so
    ``transaction.on_commit`` callbacks would never run. Inside this block,
    when an ``atomic`` block (a unit of work, or one of the test's own) ends
    with only the test's transaction left open, the callbacks registered
    since the block began run, as they would after a real commit. A rollback
    drops them, as in production. Deliveries run inline, in this thread,
    whatever the configured executor.
    """
    with executors.use(InlineExecutor()), compat.commits_at_savepoints(connections[using]):
        yield


def run_due(using: str = DEFAULT_DB_ALIAS) -> int:
    """Run every delivery due now on database ``using`` in this thread, and those due
    again at once after a failed call, until none is due; how many calls ran."""
    return drain(using)


def pytest_configure(config: Any) -> None:
    """Listed as a pytest plugin by its former name: load the fixtures' module."""
    config.pluginmanager.import_plugin("messagebus.pytest_plugin")
