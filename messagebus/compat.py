"""Every private internal of Django or of a library that messagebus relies on, and only here.

Where no public API does the job, the private use is walled in this module and
``tests/unit/messagebus/test_compat.py`` pins the behaviour each one relies
on, so a release of Django (or of argparse, or of OpenTelemetry) that changes
it fails that test, by name, rather than some other test in some other way.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import Any

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper


class Atomic(transaction.Atomic):
    """What ``transaction.atomic()`` returns, to subclass: a context manager and decorator
    that keeps its state on the connection, so it may be entered again while open.

    The class and its constructor are private; this one is built by keyword.
    """

    def __init__(self, using: str, *, savepoint: bool, durable: bool) -> None:
        super().__init__(using=using, savepoint=savepoint, durable=durable)


def atomic_blocks(connection: BaseDatabaseWrapper) -> list[Any]:
    """The ``atomic`` blocks open on ``connection`` (``Atomic`` instances), outermost first."""
    blocks: list[Any] = connection.atomic_blocks
    return blocks


def in_atomic_block(connection: BaseDatabaseWrapper) -> bool:
    """Whether an ``atomic`` block is open on ``connection``."""
    return bool(connection.in_atomic_block)


def on_commit_callbacks(connection: BaseDatabaseWrapper) -> list[Callable[[], Any]]:
    """The functions ``transaction.on_commit()`` registered in the open transaction, in
    order: those registered in a savepoint since rolled back are not among them."""
    return [entry[1] for entry in connection.run_on_commit]


@contextmanager
def commits_at_savepoints(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """Inside the block, an ``atomic`` block that ends with as many blocks open as when
    it was entered (a test's transaction) runs the on-commit callbacks registered since,
    as a commit would; its rollback drops them, as ever."""
    depth, start = len(connection.atomic_blocks), len(connection.run_on_commit)
    release = connection.savepoint_commit

    def savepoint_commit(sid: str) -> None:
        release(sid)
        # Atomic.__exit__ pops its block before releasing its savepoint.
        if len(connection.atomic_blocks) != depth:
            return
        while len(connection.run_on_commit) > start:
            callbacks = connection.run_on_commit[start:]
            del connection.run_on_commit[start:]
            for _, callback, *_ in callbacks:
                callback()

    connection.savepoint_commit = savepoint_commit  # type: ignore[method-assign]
    try:
        yield
    finally:
        del connection.savepoint_commit


def new_connection(connection: BaseDatabaseWrapper) -> Any:
    """A DB-API connection of its own to ``connection``'s database, made as Django makes
    its own (settings, OPTIONS): Django does not manage it; the caller closes it.

    With a PostgreSQL connection pool (OPTIONS["pool"]), it is taken from the pool.
    """
    return connection.get_new_connection(connection.get_connection_params())


def preparing_cursor(connection: BaseDatabaseWrapper) -> CursorWrapper | None:
    """A cursor of Django's (logged like its own) on PostgreSQL ``connection``, whose
    statements psycopg 3 binds on the server and prepares at their first run; None with
    psycopg2.

    Django leaves psycopg's ``prepare_threshold`` at None, under which psycopg prepares
    nothing, even when asked: it is raised out of reach, so that psycopg still prepares
    nothing of its own accord. Its query log reads a statement's text back from psycopg,
    which keeps none for a prepared one: it is given the text instead.
    """
    factory = _preparing_cursor_class()
    if factory is None:
        return None
    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw = connection.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = 2**62
    cursor = factory(raw)
    return (
        _Logged(cursor, connection)
        if connection.queries_logged
        else CursorWrapper(cursor, connection)
    )


class _Logged(CursorDebugWrapper):
    def execute(self, sql: Any, params: Any = None) -> Any:
        with self.debug_sql(sql, params):
            return CursorWrapper.execute(self, sql, params)


@cache
def _preparing_cursor_class() -> type[Any] | None:
    try:
        import psycopg  # PostgreSQL's driver: there only
    except ImportError:
        return None

    class Preparing(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
            return super().execute(query, params, prepare=True, **options)

    return Preparing


def tracer_provider_unset(trace: ModuleType) -> bool:
    """Whether OpenTelemetry surely has no global tracer provider yet: neither set nor
    loaded from OTEL_PYTHON_TRACER_PROVIDER (False when it cannot tell).

    Cheaper than ``trace.get_tracer_provider()``, which reads the environment each
    time no provider is set.
    """
    return getattr(trace, "_TRACER_PROVIDER", True) is None


def copy_options(
    source: argparse.ArgumentParser, into: argparse.ArgumentParser, *, leave: set[str]
) -> None:
    """Add copies of ``source``'s options (but those whose dest is in ``leave``) to
    ``into``, defaulting to nothing (``argparse.SUPPRESS``): given there, they count."""
    for option in source._actions:
        if option.option_strings and option.dest not in leave:
            into._add_action(copy.copy(option)).default = argparse.SUPPRESS
