"""Pins: the behaviour of each private internal that messagebus/compat.py relies on.

A release of Django, argparse or OpenTelemetry that changes one fails its test
here, by name. The database is SQLite in memory; tests marked ``django_db`` run
inside the test's transaction, so their ``atomic`` blocks are savepoints, as in
a test of an app that uses messagebus.
"""

from __future__ import annotations

import argparse
import inspect

import pytest
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from messagebus import compat


class Boom(Exception):
    pass


def test_atomic_is_the_class_atomic_returns_and_takes_using_savepoint_and_durable():
    assert isinstance(transaction.atomic(), transaction.Atomic)
    parameters = list(inspect.signature(transaction.Atomic.__init__).parameters)
    assert parameters == ["self", "using", "savepoint", "durable"]
    block = compat.Atomic("default", savepoint=False, durable=True)
    assert (block.using, block.savepoint, block.durable) == ("default", False, True)


@pytest.mark.django_db
def test_an_atomic_block_is_on_the_connection_while_open_and_may_be_entered_again():
    block = compat.Atomic("default", savepoint=True, durable=False)
    before = list(compat.atomic_blocks(connection))
    with block:
        assert compat.atomic_blocks(connection) == [*before, block]
        with pytest.raises(Boom), block:  # entered again: a savepoint
            assert compat.atomic_blocks(connection) == [*before, block, block]
            Group.objects.create(name="rolled back")
            raise Boom
        assert not transaction.get_rollback()
        Group.objects.create(name="kept")
    assert compat.atomic_blocks(connection) == before
    assert list(Group.objects.values_list("name", flat=True)) == ["kept"]


@pytest.mark.django_db
def test_an_atomic_block_without_savepoint_fails_the_block_around_it():
    with transaction.atomic():
        with pytest.raises(Boom), compat.Atomic("default", savepoint=False, durable=False):
            raise Boom
        assert transaction.get_rollback()
        transaction.set_rollback(False)


@pytest.mark.django_db
def test_an_atomic_block_decorates_a_function():
    block = compat.Atomic("default", savepoint=True, durable=False)

    @block
    def inside() -> list[object]:
        return list(compat.atomic_blocks(connection))

    assert inside()[-1] is block


@pytest.mark.django_db(transaction=True)
def test_in_atomic_block_says_whether_an_atomic_block_is_open():
    assert not compat.in_atomic_block(connection)
    assert compat.atomic_blocks(connection) == []
    with transaction.atomic():
        assert compat.in_atomic_block(connection)
    assert not compat.in_atomic_block(connection)


@pytest.mark.django_db
def test_on_commit_callbacks_are_those_registered_and_not_rolled_back_in_order():
    def first() -> None: ...
    def dropped() -> None: ...
    def second() -> None: ...

    with transaction.atomic():
        start = len(compat.on_commit_callbacks(connection))
        transaction.on_commit(first)
        with pytest.raises(Boom), transaction.atomic():
            transaction.on_commit(dropped)
            raise Boom
        transaction.on_commit(second, robust=True)
        assert compat.on_commit_callbacks(connection)[start:] == [first, second]


@pytest.mark.django_db
def test_commits_at_savepoints_runs_the_callbacks_as_the_outermost_block_ends():
    ran: list[str] = []
    with compat.commits_at_savepoints(connection):
        with transaction.atomic():
            transaction.on_commit(lambda: ran.append("outer"))
            with transaction.atomic():
                transaction.on_commit(lambda: ran.append("inner"))
            assert ran == []
        assert ran == ["outer", "inner"]

        with pytest.raises(Boom), transaction.atomic():
            transaction.on_commit(lambda: ran.append("rolled back"))
            raise Boom
        with transaction.atomic():
            transaction.on_commit(lambda: transaction.on_commit(lambda: ran.append("chained")))
        assert ran == ["outer", "inner", "chained"]
    assert "savepoint_commit" not in vars(connection)  # the connection's own method again


@pytest.mark.django_db
def test_new_connection_is_one_of_its_own_to_the_same_database():
    Group.objects.create(name="seen")
    raw = compat.new_connection(connection)
    try:
        assert raw is not connection.connection
        cursor = raw.cursor()
        cursor.execute(f"SELECT COUNT(*) FROM {Group._meta.db_table}")  # the test database's
        assert cursor.fetchone() == (0,)  # the test's transaction is not committed
    finally:
        raw.close()
    assert Group.objects.filter(name="seen").exists()  # Django's own is untouched


def test_tracer_provider_unset_reads_where_opentelemetry_keeps_its_provider(monkeypatch):
    trace = pytest.importorskip("opentelemetry.trace")
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    once = pytest.importorskip("opentelemetry.util._once")
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # fails if it is gone
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", once.Once())
    assert compat.tracer_provider_unset(trace)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    provider = sdk.TracerProvider()
    trace.set_tracer_provider(provider)
    assert not compat.tracer_provider_unset(trace)
    assert trace.get_tracer_provider() is provider


def test_copy_options_gives_a_parser_copies_of_another_s_options_defaulting_to_nothing():
    source = BaseCommand().create_parser("manage.py", "messagebus")
    source.add_argument("--database", default="default")
    into = argparse.ArgumentParser(add_help=False)
    compat.copy_options(source, into, leave={"help", "database"})

    assert vars(into.parse_args([])) == {}
    assert vars(into.parse_args(["-v", "2", "--traceback"])) == {
        "verbosity": 2,
        "traceback": True,
    }
    with pytest.raises(SystemExit):
        into.parse_args(["--database", "other"])
    assert source.parse_args([]).verbosity == 1  # the source's options are left as they were
