"""The outbox's hot-path statements, as plain SQL.

Every command that records an event and every delivery runs these, so they
skip the ORM's query building, which costs more than the statements
themselves. They are built once per database vendor from the models'
metadata and take values prepared by the models' own fields, so they follow
the schema and each backend's conventions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper

from .models import Delivery, StoredEvent

EVENT_COLUMNS = ("id", "type", "payload", "correlation_id", "causation_id", "created_at")
DELIVERY_COLUMNS = (
    "event", "handler", "status", "attempts", "runs",
    "next_attempt_at", "last_error", "traceback", "created_at",
)  # fmt: skip
PENDING, DONE = Delivery.Status.PENDING.value, Delivery.Status.DONE.value


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def _event_field(name: str) -> models.Field[Any, Any]:
    return _field(StoredEvent, name)


def _delivery_field(name: str) -> models.Field[Any, Any]:
    return _field(Delivery, name)


class Statements:
    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name
        events, table = quote(StoredEvent._meta.db_table), quote(Delivery._meta.db_table)
        col = {f: quote(_delivery_field(f).column) for f in (*DELIVERY_COLUMNS, "finished_at")}
        event_columns = ", ".join(quote(_event_field(f).column) for f in EVENT_COLUMNS)
        where = f"WHERE {col['event']} = %s AND {col['handler']} = %s AND {col['status']} = %s"
        self.insert_event = (
            f"INSERT INTO {events} ({event_columns}) VALUES ({_marks(EVENT_COLUMNS)})"
        )
        self.insert_deliveries = (
            f"INSERT INTO {table} ({', '.join(col[f] for f in DELIVERY_COLUMNS)}) VALUES "
        )
        self.delivery_values = f"({_marks(DELIVERY_COLUMNS)})"
        # PostgreSQL runs an INSERT inside WITH; its foreign keys are checked at commit.
        self.one_statement = connection.vendor == "postgresql"
        complete = (
            f"UPDATE {table} SET {col['status']} = %s, {col['finished_at']} = %s, "
            f"{col['attempts']} = {col['attempts']} + 1"
        )
        # PostgreSQL: the delivery's transaction need not wait for its WAL flush.
        # A crash can only lose it whole (the handler's work with the mark that
        # it is done), and then the delivery runs again; the command that
        # stored the event was committed durably before.
        lazy = "; SET LOCAL synchronous_commit TO OFF" if _many_statements(connection) else ""
        # A run claimed by a worker was counted by the claim.
        self.complete = {
            True: f"{complete}, {col['runs']} = {col['runs']} + 1 {where}{lazy}",
            False: f"{complete} {where}{lazy}",
        }


_ID = _event_field("id")
_PAYLOAD = _event_field("payload")
_CORRELATION = _event_field("correlation_id")
_CAUSATION = _event_field("causation_id")
_WHEN = _delivery_field("created_at")
_built: dict[str, Statements] = {}


def _statements(connection: BaseDatabaseWrapper) -> Statements:
    """The statements for ``connection``'s database alias, built on first use."""
    try:
        return _built[connection.alias]
    except KeyError:
        _built[connection.alias] = built = Statements(connection)
        return built


def _many_statements(connection: BaseDatabaseWrapper) -> bool:
    """PostgreSQL with client-side binding (the default) runs two statements at once."""
    options = connection.settings_dict.get("OPTIONS", {})
    return connection.vendor == "postgresql" and not options.get("server_side_binding")


def store(
    using: str,
    event_id: UUID,
    type_name: str,
    payload: dict[str, Any],
    correlation_id: UUID | None,
    causation_id: UUID | None,
    handlers: Sequence[str],
    now: dt.datetime,
) -> None:
    """Insert an event and one pending delivery per handler."""
    connection = connections[using]
    sql = _statements(connection)
    event = _ID.get_db_prep_value(event_id, connection)
    when = _WHEN.get_db_prep_value(now, connection)
    params = [
        event, type_name, _PAYLOAD.get_db_prep_value(payload, connection),
        _CORRELATION.get_db_prep_value(correlation_id, connection),
        _CAUSATION.get_db_prep_value(causation_id, connection), when,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        if not handlers:
            cursor.execute(sql.insert_event, params)
            return
        deliveries = sql.insert_deliveries + ", ".join([sql.delivery_values] * len(handlers))
        for name in handlers:
            params += [event, name, PENDING, 0, 0, when, "", "", when]
        if sql.one_statement:
            # One round trip: the event's INSERT rides in a WITH clause.
            cursor.execute(f"WITH event AS ({sql.insert_event}) {deliveries}", params)
        else:
            cursor.execute(sql.insert_event, params[: len(EVENT_COLUMNS)])
            cursor.execute(deliveries, params[len(EVENT_COLUMNS) :])


def complete(
    using: str, event_id: UUID, handler: str, now: dt.datetime, *, count_run: bool = True
) -> bool:
    """Mark a pending delivery done in the current transaction, locking its row.

    Called before the handler runs, in the handler's transaction: if the
    handler fails, the rollback makes the delivery pending again; a second
    runner waits on the lock, then finds it done. False: it is not pending.
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(_statements(connection).complete[count_run], [
            DONE, _WHEN.get_db_prep_value(now, connection),
            _ID.get_db_prep_value(event_id, connection), handler, PENDING,
        ])  # fmt: skip
        return bool(cursor.rowcount == 1)


def _marks(columns: Sequence[str]) -> str:
    return ", ".join(["%s"] * len(columns))
