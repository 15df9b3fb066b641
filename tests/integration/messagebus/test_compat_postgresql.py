"""Pins, on PostgreSQL: the behaviour of psycopg and Django that ``compat.preparing_cursor``
relies on (see tests/unit/messagebus/test_compat.py for the others)."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from messagebus import compat
from tests.conftest import postgres_only

pytestmark = postgres_only.marks
STATEMENT = "SELECT %s::int + 1 AS pinned"


def prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s", ["%pinned"]
        )
        return [row[0] for row in cursor.fetchall()]


def test_psycopg_prepares_nothing_asked_while_django_leaves_its_threshold_at_none(db):
    import psycopg

    assert connection.get_connection_params()["prepare_threshold"] is None  # Django's default
    fresh = compat.new_connection(connection)
    try:
        assert fresh.prepare_threshold is None
        with psycopg.Cursor(fresh) as cursor:
            cursor.execute(STATEMENT, [1], prepare=True)
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%pinned'"
            )
            assert cursor.fetchone() == (0,)
    finally:
        fresh.close()


def test_a_preparing_cursor_prepares_each_statement_once_and_logs_its_text(db):
    with CaptureQueriesContext(connection) as queries:
        for n in range(3):
            with compat.preparing_cursor(connection) as cursor:
                cursor.execute(STATEMENT, [n])
                assert cursor.fetchone() == (n + 1,)
    assert [q["sql"] for q in queries] == [STATEMENT] * 3
    assert prepared() == ["SELECT $1::int + 1 AS pinned"]
    with compat.preparing_cursor(connection) as cursor:  # not logged: Django's plain wrapper
        cursor.execute(STATEMENT, [7])
        assert cursor.fetchone() == (8,)
    assert len(prepared()) == 1
