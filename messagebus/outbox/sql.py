"""The outbox's hot-path statements, as plain SQL: the only raw SQL of messagebus.

Every command that records an event and every delivery runs these, so they
skip the ORM's query building, which costs more than the statements
themselves. They are built once per database vendor from the models'
metadata and take values prepared by the models' own fields, so they follow
the schema and each backend's conventions.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from ..models import DEFAULT_QUEUE, Delivery, Pause, StoredEvent

EVENT_COLUMNS = (
    "id", "type", "payload", "correlation_id", "causation_id", "trace_context", "created_at"
)  # fmt: skip
DELIVERY_COLUMNS = (
    "event", "handler", "status", "attempts", "runs", "calls",
    "next_attempt_at", "last_error", "traceback", "created_at", "priority", "queue",
)  # fmt: skip
PENDING, DONE = Delivery.Status.PENDING.value, Delivery.Status.DONE.value


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def _column(field: models.Field[Any, Any]) -> str:
    """A concrete field's column (Django 6.1's types allow None, for fields that have none)."""
    assert field.column is not None
    return field.column


def _event_field(name: str) -> models.Field[Any, Any]:
    return _field(StoredEvent, name)


def _delivery_field(name: str) -> models.Field[Any, Any]:
    return _field(Delivery, name)


class Statements:
    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name
        events, table = quote(StoredEvent._meta.db_table), quote(Delivery._meta.db_table)
        names = (*DELIVERY_COLUMNS, "id", "finished_at", "lease_until")
        col = {f: quote(_column(_delivery_field(f))) for f in names}
        event_columns = ", ".join(quote(_column(_event_field(f))) for f in EVENT_COLUMNS)
        self.insert_event = (
            f"INSERT INTO {events} ({event_columns}) VALUES ({_marks(EVENT_COLUMNS)})"
        )
        self.insert_deliveries = (
            f"INSERT INTO {table} ({', '.join(col[f] for f in DELIVERY_COLUMNS)}) VALUES "
        )
        self.delivery_values = f"({_marks(DELIVERY_COLUMNS)})"
        self.load_event = (
            f"SELECT {', '.join(quote(_column(_event_field(f))) for f in EVENT_COLUMNS[1:6])} "
            f"FROM {events} WHERE {quote(_column(_event_field('id')))} = %s"
        )
        # PostgreSQL runs an INSERT inside WITH; its foreign keys are checked at commit.
        self.one_statement = connection.vendor == "postgresql"
        # PostgreSQL: the delivery's transaction need not wait for its WAL flush.
        # A crash can only lose it whole (the handler's work with the mark that
        # it is done), and then the delivery runs again; the command that
        # stored the event was committed durably before.
        lazy = "; SET LOCAL synchronous_commit TO OFF" if _many_statements(connection) else ""
        done = (
            f"UPDATE {table} SET {col['status']} = %s, {col['finished_at']} = %s, "
            f"{col['attempts']} = {col['attempts']} + 1, {col['runs']} = {col['runs']} + 1, "
            f"{col['calls']} = 0, {col['lease_until']} = NULL"
        )
        # Not while its handler is paused (``models.paused``; a breaker's probe may):
        # no claim, no done-mark.
        pauses = quote(Pause._meta.db_table)
        pause_handler = quote(_column(_field(Pause, "handler")))
        probe = quote(_column(_field(Pause, "probe")))
        unpaused = (
            f"NOT EXISTS (SELECT 1 FROM {pauses} p WHERE p.{pause_handler} = "
            f"{table}.{col['handler']} AND (p.{probe} IS NULL OR p.{probe} <> "
            f"{table}.{col['event']}))"
        )
        one = f"WHERE {col['event']} = %s AND {col['handler']} = %s AND {col['status']} = %s"
        # By (leased, paused may be): the check of the pauses costs PostgreSQL a subquery
        # to plan, so it is left out while no handler is paused (``states.any_paused``).
        self.done_one = {
            (leased, gated): f"{done} {one}{f' AND {unpaused}' if gated else ''} AND "
            f"{col['lease_until']} {'= %s' if leased else 'IS NULL'}{lazy}"
            for leased in (False, True)
            for gated in (False, True)
        }
        self.done_many = f"{done} WHERE {col['id']} IN "
        self.lazy = lazy
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        self.lock = (
            (
                f"SELECT {col['id']} FROM {table} WHERE {col['status']} = %s "
                f"AND {col['lease_until']} = %s AND {col['id']} IN "
            ),
            lock,
        )
        event_id = quote(_column(_event_field("id")))
        created = quote(_column(_event_field("created_at")))
        # The literal status, so PostgreSQL's planner can use the partial index; {} is
        # where the filters by pause and by queue go.
        self.unpaused = f"AND {unpaused} "
        due = (
            f"SELECT {col['id']} FROM {table} WHERE {col['status']} = '{PENDING}' "
            f"AND {col['lease_until']} IS NULL AND {col['next_attempt_at']} <= %s {{}}"
            f"ORDER BY {col['priority']} DESC, {col['next_attempt_at']}, {col['id']} LIMIT %s"
        )
        self.in_queues = f"AND {col['queue']} IN ({{}}) "
        read = (
            f"SELECT c.{col['id']}, c.{col['handler']}, c.{col['runs']}, c.{col['calls']}, "
            + ", ".join(f"e.{quote(_column(_event_field(f)))}" for f in EVENT_COLUMNS[:6])
            + f", c.{col['created_at']}"
            + f" FROM {{}} c JOIN {events} e ON e.{event_id} = c.{col['event']} {{}}"
            f"ORDER BY c.{col['priority']} DESC, c.{col['next_attempt_at']}, c.{col['id']}"
        )
        finished = ", ".join(f"'{status}'" for status in Delivery.FINISHED)
        # A chunk of finished deliveries (on PostgreSQL with the events among theirs
        # left without any), then (``prune_events``) the old events left without any.
        # The prune rule, once: a delivery goes once finished before the cut-off; an
        # event once old and left without deliveries.
        gone = f"{{0}}{col['status']} IN ({finished}) AND {{0}}{col['finished_at']} < %s"
        chunk = (
            f"DELETE FROM {table} WHERE {col['id']} IN (SELECT {col['id']} FROM {table} "
            f"WHERE {gone.format('')} LIMIT %s)"
        )
        # What a prune would delete (its dry run): the same rule, counted.
        self.prunable = (
            f"SELECT (SELECT count(*) FROM {table} WHERE {gone.format('')}), "
            f"(SELECT count(*) FROM {events} e WHERE e.{created} < %s AND NOT EXISTS "
            f"(SELECT 1 FROM {table} d WHERE d.{col['event']} = e.{event_id} "
            f"AND NOT ({gone.format('d.')})))"
        )
        if connection.vendor == "postgresql":
            # One statement, which still sees the deliveries it deletes: an event goes
            # if it has none but those. Fresh statistics for its plan; no WAL flush
            # per chunk (a crash loses at most the last chunks, pruned again next time).
            # (Elsewhere a scan of the old events after the deliveries is cheaper:
            # rows deleted are gone from the scan, where PostgreSQL's linger.)
            self.prune_chunk = (
                f"WITH gone AS ({chunk} RETURNING {col['id']}, {col['event']}), "
                f"orphans AS (DELETE FROM {events} e "
                f"USING (SELECT DISTINCT {col['event']} AS id FROM gone) g "
                f"WHERE e.{event_id} = g.id AND NOT EXISTS (SELECT 1 FROM {table} d "
                f"WHERE d.{col['event']} = e.{event_id} AND NOT EXISTS "
                f"(SELECT 1 FROM gone WHERE gone.{col['id']} = d.{col['id']})) RETURNING 1) "
                "SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM orphans)"
            )
            self.prune_counts = True
            self.prune_first = [f"ANALYZE {events}, {table}"]
            self.prune_each = [lazy.lstrip("; ")]
        else:
            self.prune_chunk, self.prune_counts = chunk, False
            self.prune_first = self.prune_each = []
        self.prune_events = (
            f"DELETE FROM {events} WHERE {event_id} IN (SELECT e.{event_id} FROM {events} e "
            f"WHERE e.{created} < %s AND NOT EXISTS "
            f"(SELECT 1 FROM {table} d WHERE d.{col['event']} = e.{event_id}) LIMIT %s)"
        )
        lease = f"UPDATE {table} SET {col['lease_until']} = %s WHERE {col['id']} IN "
        if connection.vendor == "postgresql":
            # One round trip: lease the due rows and read them with their events.
            self.claim = [
                f"WITH claimed AS ({lease}({due} FOR UPDATE SKIP LOCKED) RETURNING "
                f"{col['id']}, {col['event']}, {col['handler']}, {col['runs']}, {col['calls']}, "
                f"{col['next_attempt_at']}, {col['created_at']}, {col['priority']}) "
                + read.format("claimed", "")
            ]
        else:  # one writer at a time: pick, lease, read
            self.claim = [due, lease, read.format(table, f"WHERE c.{col['id']} IN {{}} ")]
        self._claims: dict[tuple[int, bool], list[str]] = {}

    def claim_in(self, queues: int, paused: bool) -> list[str]:
        """The claim's statements, for deliveries of any queue (0) or of ``queues`` queues,
        and leaving out paused handlers' if ``paused`` (some handler may be: the check
        costs the claim's plan its speed, so it is left out while none is)."""
        try:
            return self._claims[queues, paused]
        except KeyError:
            where = (self.unpaused if paused else "") + (
                self.in_queues.format(_marks(range(queues))) if queues else ""
            )
            built = [self.claim[0].format(where), *self.claim[1:]]
            self._claims[queues, paused] = built
            return built


_ID = _event_field("id")
_PAYLOAD = _event_field("payload")
_CORRELATION = _event_field("correlation_id")
_CAUSATION = _event_field("causation_id")
_TRACE = _event_field("trace_context")


def _datetime(value: Any) -> dt.datetime:
    """A datetime column's value as read raw: aware already (PostgreSQL), or naive UTC
    (SQLite: as Django writes it, parsed by its converter, or text)."""
    when: dt.datetime = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _json(value: Any) -> Any:
    """A JSON column's value as read raw: decoded already (PostgreSQL) or text (SQLite)."""
    return json.loads(value) if isinstance(value, str) else value


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


Loaded = tuple[str, dict[str, Any], UUID, UUID | None, dict[str, str] | None]


def load_event(using: str, event: UUID) -> Loaded | None:
    """An event's (type, payload, correlation id, causation id, trace context), or None
    if it is gone."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            _statements(connection).load_event, [_ID.get_db_prep_value(event, connection)]
        )
        row = cursor.fetchone()
    if row is None:
        return None
    kind, payload, correlation, causation, trace = row
    return (
        kind,
        _json(payload),
        _CORRELATION.to_python(correlation),
        _CAUSATION.to_python(causation),
        _json(trace),
    )


def store(
    using: str,
    event_id: UUID,
    type_name: str,
    payload: dict[str, Any],
    correlation_id: UUID | None,
    causation_id: UUID | None,
    trace: dict[str, str] | None,
    handlers: Sequence[str],
    now: dt.datetime,
    *,
    due: dt.datetime | None = None,
    priority: int = 0,
    queue: str = DEFAULT_QUEUE,
    wake: bool = False,
) -> None:
    """Insert an event and one pending delivery per handler, due from ``due`` (default
    ``now``), claimed in order of ``priority`` (higher first), in ``queue``. ``wake``:
    NOTIFY the listening workers as the transaction commits, in the same round trip
    (PostgreSQL sends one per transaction, and none if a savepoint holding it rolls
    back), where ``wakes_in_store``."""
    connection = connections[using]
    sql = _statements(connection)
    event = _ID.get_db_prep_value(event_id, connection)
    when = _WHEN.get_db_prep_value(now, connection)
    due_at = when if due is None else _WHEN.get_db_prep_value(due, connection)
    params = [
        event, type_name, _PAYLOAD.get_db_prep_value(payload, connection),
        _CORRELATION.get_db_prep_value(correlation_id, connection),
        _CAUSATION.get_db_prep_value(causation_id, connection),
        _TRACE.get_db_prep_value(trace, connection), when,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        if not handlers:
            cursor.execute(sql.insert_event, params)
            return
        deliveries = sql.insert_deliveries + ", ".join([sql.delivery_values] * len(handlers))
        for name in handlers:
            params += [event, name, PENDING, 0, 0, 0, due_at, "", "", when, priority, queue]
        if sql.one_statement:
            # One round trip: the event's INSERT rides in a WITH clause, the NOTIFY after it.
            stored = f"WITH event AS ({sql.insert_event}) {deliveries}"
            if wake and _many_statements(connection):
                stored += f"; NOTIFY {CHANNEL}"
            cursor.execute(stored, params)
        else:
            cursor.execute(sql.insert_event, params[: len(EVENT_COLUMNS)])
            cursor.execute(deliveries, params[len(EVENT_COLUMNS) :])


def wakes_in_store(using: str) -> bool:
    """Whether ``store(wake=True)`` sends the NOTIFY itself: PostgreSQL with client-side
    binding (two statements in one round trip)."""
    return _many_statements(connections[using])


def stores_in_one_statement(using: str) -> bool:
    """Whether ``store`` writes an event and its deliveries in one statement (PostgreSQL)."""
    return _statements(connections[using]).one_statement


def done_one(
    using: str,
    event_id: UUID,
    handler: str,
    lease: dt.datetime | None,
    now: dt.datetime,
    *,
    paused: bool = True,
) -> bool:
    """Mark one pending delivery done in the current transaction, locking its row.

    False: it is not pending, or not under this ``lease`` (None: unleased), or (unless
    ``paused`` is False: no handler is) its handler is paused.
    """
    connection = connections[using]
    params = [
        DONE, _WHEN.get_db_prep_value(now, connection),
        _ID.get_db_prep_value(event_id, connection), handler, PENDING,
    ]  # fmt: skip
    if lease is not None:
        params.append(_WHEN.get_db_prep_value(lease, connection))
    with connection.cursor() as cursor:
        cursor.execute(_statements(connection).done_one[lease is not None, paused], params)
        return bool(cursor.rowcount == 1)


def done_many(using: str, ids: Sequence[int], now: dt.datetime) -> None:
    """Mark these deliveries (locked by this transaction) done."""
    if not ids:
        return
    connection = connections[using]
    sql = _statements(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"{sql.done_many}({_marks(ids)}){sql.lazy}",
            [DONE, _WHEN.get_db_prep_value(now, connection), *ids],
        )


def lock(using: str, ids: Sequence[int], lease: dt.datetime) -> set[int]:
    """Lock, for this transaction, those of ``ids`` still pending under ``lease``."""
    if not ids:
        return set()
    connection = connections[using]
    head, tail = _statements(connection).lock
    with connection.cursor() as cursor:
        cursor.execute(
            f"{head}({_marks(ids)}){tail}",
            [PENDING, _WHEN.get_db_prep_value(lease, connection), *ids],
        )
        return {row[0] for row in cursor.fetchall()}


def prunable(using: str, before: dt.datetime) -> tuple[int, int]:
    """How many deliveries and events ``prune`` would delete: (deliveries, events)."""
    connection = connections[using]
    when = _WHEN.get_db_prep_value(before, connection)
    with connection.cursor() as cursor:
        cursor.execute(_statements(connection).prunable, [when, when, when])
        deliveries, events = cursor.fetchone()
    return int(deliveries), int(events)


def prune(using: str, before: dt.datetime, chunk: int) -> tuple[int, int]:
    """Delete deliveries finished before ``before``, then old events left without any,
    ``chunk`` rows a transaction: no long locks.

    Returns (deliveries, events) deleted.
    """
    connection = connections[using]
    sql = _statements(connection)
    when = _WHEN.get_db_prep_value(before, connection)
    deliveries = events = 0
    with connection.cursor() as cursor:
        for statement in sql.prune_first:
            cursor.execute(statement)
        while True:
            with transaction.atomic(using=using):
                for statement in sql.prune_each:
                    cursor.execute(statement)
                gone, left = _prune_chunk(cursor, sql, when, chunk)
            deliveries, events = deliveries + gone, events + left
            if gone < chunk:
                break
        while True:
            with transaction.atomic(using=using):
                cursor.execute(sql.prune_events, [when, chunk])
                events += cursor.rowcount
            if cursor.rowcount < chunk:
                break
    return deliveries, events


def _prune_chunk(cursor: Any, sql: Statements, when: object, chunk: int) -> tuple[int, int]:
    """Delete one chunk of finished deliveries (and, on PostgreSQL, the events they
    leave without any): (deliveries, events) deleted."""
    cursor.execute(sql.prune_chunk, [when, chunk])
    if sql.prune_counts:
        gone, left = cursor.fetchone()
        return int(gone), int(left)
    return cursor.rowcount, 0


Claimed = tuple[
    int, str, int, int, UUID, str, dict[str, Any], UUID, UUID | None, dict[str, str] | None,
    dt.datetime,
]  # fmt: skip


def claim(
    using: str,
    limit: int,
    lease: dt.datetime,
    due: dt.datetime,
    queues: Sequence[str] = (),
    *,
    paused: bool = True,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (of ``queues`` only, if any; not of paused
    handlers, unless ``paused`` is False: none is), highest priority first, then in the
    order they fell due, with their events.

    Each row: (id, handler, runs, calls, event id, type, payload, correlation id, causation id,
    trace context, when the delivery was stored).
    """
    connection = connections[using]
    params = [
        _WHEN.get_db_prep_value(lease, connection),
        _WHEN.get_db_prep_value(due, connection),
        *queues,
        limit,
    ]
    statements = _statements(connection).claim_in(len(queues), paused)
    with connection.cursor() as cursor:
        if len(statements) == 1:
            cursor.execute(statements[0], params)
            rows = cursor.fetchall()
        else:
            pick, lease_them, read = statements
            with transaction.atomic(using=using):
                cursor.execute(pick, params[1:])
                ids = [row[0] for row in cursor.fetchall()]
                if not ids:
                    return []
                marks = f"({_marks(ids)})"
                cursor.execute(lease_them + marks, [params[0], *ids])
                cursor.execute(read.format(marks), ids)
                rows = cursor.fetchall()
    return [
        (
            pk, handler, runs, calls, _ID.to_python(event), kind, _json(payload),
            _CORRELATION.to_python(correlation), _CAUSATION.to_python(causation), _json(trace),
            _datetime(stored),
        )
        for pk, handler, runs, calls, event, kind, payload, correlation, causation, trace, stored
        in rows
    ]  # fmt: skip


def _marks(values: Sequence[object]) -> str:
    return ", ".join(["%s"] * len(values))


def bound_statements(using: str, seconds: float) -> None:
    """Cut short any statement of the current transaction that runs past ``seconds``
    (PostgreSQL; elsewhere nothing)."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL statement_timeout = {int(seconds * 1000)}")


CHANNEL = "messagebus"  # what PostgreSQL's NOTIFY and LISTEN name


def notify(using: str) -> None:
    """Wake listening workers (PostgreSQL only; in a transaction, as it commits)."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"NOTIFY {CHANNEL}")


def listen_statement() -> str:
    return f"LISTEN {CHANNEL}"
