"""Where the unit of work hands what it stored: the executor in use.

``get()`` is the executor MESSAGEBUS["EXECUTOR"] names (``messagebus.executors``
holds the ones the bus ships, loaded by their dotted path, so this layer imports
none of them); ``use()`` overrides it in tests; ``here()`` keeps the deliveries
an async caller's commit made, to await them on its event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from types import TracebackType
from typing import Protocol, cast

from django.db import connections, transaction
from django.utils.module_loading import import_string

from .. import compat, conf
from ..outbox.reference import Reference


class Executor(Protocol):
    def submit(self, refs: list[Reference]) -> None:
        """Deliveries stored in the current transaction, or just made due (a retry)."""

    def retried(self, refs: list[Reference]) -> None:
        """Deliveries an operator made due again, outside any transaction."""


def wakes(executor: Executor) -> bool:
    """Whether ``executor`` wants the workers woken by the statement that stores
    deliveries (its ``wakes_workers``): the worker executor does, on PostgreSQL."""
    return bool(getattr(executor, "wakes_workers", False))


_built: dict[str, Executor] = {}
_overrides: list[Executor] = []
# Inside ``here()``: where deliveries that would run in this thread go instead.
_here: ContextVar[list[Reference] | None] = ContextVar("messagebus_here", default=None)


def get() -> Executor:
    """The executor in use: MESSAGEBUS["EXECUTOR"]'s (built once per name), or an override."""
    if _overrides:
        return _overrides[-1]
    name = conf.settings.EXECUTOR
    try:
        return _built[name]
    except KeyError:
        cls = import_string(conf.EXECUTORS.get(name, name))
        executor = _built[name] = cast(Executor, cls())
        return executor


@contextmanager
def use(executor: Executor) -> Iterator[Executor]:
    """Use ``executor`` whatever the setting, inside the block (tests)."""
    _overrides.append(executor)
    try:
        yield executor
    finally:
        _overrides.remove(executor)


def committing(
    using: str,
    callback: Callable[[str, set[uuid.UUID]], None],
    stored: Iterable[uuid.UUID] = (),
) -> set[uuid.UUID]:
    """The events the current transaction stored (``stored`` added), which
    ``callback(using, events)`` gets once it commits: one callback per transaction,
    however many events ask; in autocommit (committed already), at once.

    A savepoint rolled back drops the callback with it; the next event registers anew.
    """
    for registered in compat.on_commit_callbacks(connections[using]):
        if isinstance(registered, partial) and registered.func == callback:
            events: set[uuid.UUID] = registered.args[1]
            events.update(stored)
            return events
    events = set(stored)
    transaction.on_commit(partial(callback, using, events), using=using, robust=True)
    return events


def later() -> list[Reference] | None:
    """Where deliveries go that ``here()`` runs on its event loop; None outside it."""
    return _here.get()


class here:
    """Deliveries the executor would run in a thread inside the block (the inline one,
    after a commit in ``sync_to_async``) are awaited on this event loop after it, even
    if it raises; inside another ``here()``, after that one's block instead.

    A class rather than a generator: every async delivery enters one."""

    __slots__ = ("refs", "token")

    async def __aenter__(self) -> None:
        if _here.get() is not None:
            self.token = None
            return
        self.refs: list[Reference] = []
        self.token = _here.set(self.refs)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.token is None:  # inside another: it runs them
            return
        try:
            if self.refs and (kind is None or issubclass(kind, Exception)):
                run_here = getattr(get(), "arun", None)  # the executors that fill it have one
                if run_here is not None:
                    await run_here(self.refs)  # what committed runs, even if the block raised
        finally:
            _here.reset(self.token)


def reset() -> None:
    """Forget built executors (the settings changed)."""
    _built.clear()
