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
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from django.db import IntegrityError, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import compat, conf
from ..models import DEFAULT_QUEUE, Delivery, Pause, Slot, StoredEvent

EVENT_COLUMNS = (
    "id", "type", "payload", "correlation_id", "causation_id", "trace_context", "created_at"
)  # fmt: skip
DELIVERY_COLUMNS = (
    "event", "handler", "status", "attempts", "runs", "calls",
    "next_attempt_at", "last_error", "traceback", "created_at", "priority", "queue",
    "concurrency_key", "sequence",
)  # fmt: skip
SLOT_COLUMNS = ("handler", "key", "number", "event", "lease_until", "taken_at", "wanted")
LOOK_AHEAD = 4  # an ordered claim looks at up to this many times its limit of due deliveries
PENDING, DONE, DEAD = (Delivery.Status.PENDING.value, Delivery.Status.DONE.value,
                       Delivery.Status.DEAD.value)  # fmt: skip


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
        names = (*DELIVERY_COLUMNS, "id", "finished_at", "lease_until", "result")
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
        # The same, keeping what some of them returned (``{}``: a WHEN id THEN value each).
        self.done_keeping = (
            f"{done}, {col['result']} = CASE {col['id']} {{}}ELSE {col['result']} END "
            f"WHERE {col['id']} IN "
        )
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
        self.due_from = (
            f"FROM {table} WHERE {col['status']} = '{PENDING}' "
            f"AND {col['lease_until']} IS NULL AND {col['next_attempt_at']} <= %s {{}}"
        )
        self.order = f"ORDER BY {col['priority']} DESC, {col['next_attempt_at']}, {col['id']}"
        due = f"SELECT {col['id']} {self.due_from}{self.order} LIMIT %s"
        self.in_queues = f"AND {col['queue']} IN ({{}}) "
        read = (
            f"SELECT c.{col['id']}, c.{col['handler']}, c.{col['runs']}, c.{col['calls']}, "
            + ", ".join(f"e.{quote(_column(_event_field(f)))}" for f in EVENT_COLUMNS[:6])
            + f", c.{col['created_at']}, c.{col['concurrency_key']}"
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
        orphan = (
            f"{{0}}{created} < %s AND NOT EXISTS "
            f"(SELECT 1 FROM {table} d WHERE d.{col['event']} = {{0}}{event_id})"
        )
        self.prune_events = (
            f"DELETE FROM {events} WHERE {event_id} IN (SELECT e.{event_id} FROM {events} e "
            f"WHERE {orphan.format('e.')} LIMIT %s)"
        )
        if connection.vendor == "mysql":
            # MySQL and MariaDB refuse a LIMIT in an IN subquery, and a subquery of the
            # table a DELETE deletes from; a DELETE of their own takes a LIMIT.
            self.prune_chunk = f"DELETE FROM {table} WHERE {gone.format('')} LIMIT %s"
            self.prune_events = f"DELETE FROM {events} WHERE {orphan.format(f'{events}.')} LIMIT %s"
        lease = f"UPDATE {table} SET {col['lease_until']} = %s WHERE {col['id']} IN "
        # Each claimer skips the rows another holds (SQLite: one writer at a time; where
        # rows lock but cannot be skipped, MariaDB before 10.6, claimers take turns).
        features = connection.features
        self.skip_locked = " FOR UPDATE" if features.has_select_for_update else ""
        if features.has_select_for_update_skip_locked:
            self.skip_locked += " SKIP LOCKED"
        if connection.vendor == "postgresql":
            # One round trip: lease the due rows and read them with their events.
            self.claim = [
                f"WITH claimed AS ({lease}({{}}) RETURNING "
                f"{col['id']}, {col['event']}, {col['handler']}, {col['runs']}, {col['calls']}, "
                f"{col['next_attempt_at']}, {col['created_at']}, {col['priority']}, "
                f"{col['concurrency_key']}) " + read.format("claimed", "")
            ]
        else:  # in one transaction: pick, lease, read
            self.claim = ["{}", lease, read.format(table, f"WHERE c.{col['id']} IN {{}} ")]
        self.pick = due + self.skip_locked
        self._claims: dict[tuple[int, bool, int, bool, int | None, bool], list[str]] = {}
        self._slots(connection, table, col)
        self._ordering(table, col)

    def _ordering(self, table: str, col: dict[str, str]) -> None:
        """The claim's statements for ordered handlers (``ordering``)."""
        h, k, n = col["handler"], col["concurrency_key"], col["sequence"]
        self.table, self.col = table, col
        # An ordered delivery (a row named {0}) is due only once none of its handler's
        # deliveries of its key before it is unfinished: pending, or dead ({1} leaves out
        # the dead ones of handlers whose keys proceed past them).
        self.first = (
            f"({{0}}.{n} IS NULL OR NOT EXISTS (SELECT 1 FROM {table} o WHERE "
            f"o.{h} = {{0}}.{h} AND o.{k} = {{0}}.{k} AND o.{n} < {{0}}.{n} AND "
            f"(o.{col['status']} = '{PENDING}' OR o.{col['status']} = '{DEAD}'{{1}})))"
        )
        self.proceeding = f" AND o.{h} NOT IN ({{}})"
        # The deliveries that follow the firsts claimed of their keys (f after h), with
        # none between (b) that is dead ({proceeding}: unless its handler goes on) or
        # pending but leased, not due, stored after f (one retried, and put last of its
        # key: so that the ones taken run in id order) or ({b_queue}) of a queue not
        # claimed.
        pending, status, lease, at = (
            PENDING,
            col["status"],
            col["lease_until"],
            col["next_attempt_at"],
        )
        self.follow = (
            f"SELECT f.{col['id']} FROM {table} f JOIN {table} h ON h.{h} = f.{h} "
            f"AND h.{k} = f.{k} WHERE h.{col['id']} IN ({{firsts}}) AND f.{n} > h.{n} "
            f"AND f.{status} = '{pending}' AND f.{lease} IS NULL AND f.{at} <= %s {{f_queue}}"
            f"AND NOT EXISTS (SELECT 1 FROM {table} b WHERE b.{h} = f.{h} AND b.{k} = f.{k} "
            f"AND b.{n} > h.{n} AND b.{n} < f.{n} AND (b.{status} = '{DEAD}'{{proceeding}} OR "
            f"b.{status} = '{pending}' AND (b.{lease} IS NOT NULL OR b.{at} > %s "
            f"OR b.{col['id']} > f.{col['id']}{{b_queue}}))) "
            f"ORDER BY f.{col['id']} LIMIT %s"
        )
        # A claim looks at the first %s due deliveries only (a look at every one pending
        # would grow with the backlog, as most wait behind others of their key), takes the
        # first ones of no more than %s keys among them, leaving the rest to the other
        # runners, and no more than %s in all. ({} is where the filters go.)
        self.window = (
            f"SELECT {col['id']} FROM {table} WHERE {col['id']} IN (SELECT firsts.{col['id']} "
            f"FROM (SELECT w.{col['id']}, w.{n}, row_number() OVER (PARTITION BY w.{n} IS NULL "
            f"{self.order}) AS nth FROM (SELECT {col['id']}, {h}, {k}, {n}, {col['priority']}, "
            f"{col['next_attempt_at']} {self.due_from}{self.order} LIMIT %s) AS w "
            f"WHERE {{first}}) AS firsts WHERE firsts.{n} IS NULL OR firsts.nth <= %s) "
            f"AND {col['status']} = '{PENDING}' AND {col['lease_until']} IS NULL "
            f"{self.order} LIMIT %s{self.skip_locked}"
        )

    def follow_in(self, firsts: int, queues: int, proceeding: int) -> list[str]:
        """The statements of ``follow``: after ``firsts`` deliveries, for ``queues`` queues
        (0: any), ``proceeding`` handlers going on past a dead one."""
        names = self.proceeding.format(_marks(range(proceeding))).replace("o.", "b.")
        f_queue = f"AND f.{self.col['queue']} IN ({_marks(range(queues))}) " if queues else ""
        b_queue = f" OR b.{self.col['queue']} NOT IN ({_marks(range(queues))})" if queues else ""
        pick = self.follow.format(
            firsts=_marks(range(firsts)), f_queue=f_queue, proceeding=names, b_queue=b_queue
        )
        return [self.claim[0].format(pick), *self.claim[1:]]

    def _first(self, row: str, proceeding: int) -> str:
        names = self.proceeding.format(_marks(range(proceeding))) if proceeding else ""
        return self.first.format(row, names)

    def _slots(self, connection: BaseDatabaseWrapper, table: str, col: dict[str, str]) -> None:
        """The statements of the concurrency slots (``slots``), and the claim's gate."""
        quote = connection.ops.quote_name
        slots = quote(Slot._meta.db_table)
        slot = {f: quote(_column(_field(Slot, f))) for f in SLOT_COLUMNS}
        # How many of a handler's deliveries of one key run now (``%s``: now), for a row
        # named {0}: the slots taken; or (``in_flight``) the deliveries leased, which the
        # relay counts, as a task holds no slot until it runs.
        running = {
            False: f"(SELECT count(*) FROM {slots} s WHERE s.{slot['handler']} = "
            f"{{0}}.{col['handler']} AND s.{slot['key']} = {{0}}.{col['concurrency_key']} "
            f"AND s.{slot['lease_until']} > %s)",
            True: f"(SELECT count(*) FROM {table} l WHERE l.{col['handler']} = "
            f"{{0}}.{col['handler']} AND l.{col['concurrency_key']} = "
            f"{{0}}.{col['concurrency_key']} AND l.{col['status']} = '{PENDING}' "
            f"AND l.{col['lease_until']} > %s)",
        }
        # A capped handler's deliveries whose slots (for their key) are all taken are not
        # due: {names} are the capped handlers' names, {most} a CASE's WHEN name THEN most.
        self.capped = {
            in_flight: f"AND ({table}.{col['handler']} NOT IN ({{names}}) OR "
            f"{count.format(table)} < CASE {table}.{col['handler']} {{most}} END) "
            for in_flight, count in running.items()
        }
        # And a claim takes no more of them (for one key) than there are slots free.
        h, k = col["handler"], col["concurrency_key"]
        self.ranked = {
            in_flight: f"SELECT {col['id']} FROM (SELECT {col['id']}, {h}, {k}, row_number() "
            f"OVER (PARTITION BY {h}, {k} {self.order}) AS nth FROM (SELECT {col['id']}, {h}, "
            f"{k}, {col['priority']}, {col['next_attempt_at']} {self.due_from}{self.order} "
            f"LIMIT %s{self.skip_locked}) AS due) AS ranked WHERE ranked.{h} NOT IN ({{names}}) "
            f"OR ranked.nth <= CASE ranked.{h} {{most}} END - {count.format('ranked')}"
            for in_flight, count in running.items()
        }
        live = (
            f"s.{slot['handler']} = d.{col['handler']} AND s.{slot['key']} = "
            f"d.{col['concurrency_key']} AND s.{slot['lease_until']} > %s"
        )
        ours = (
            f"d.{col['event']} = %s AND d.{col['handler']} = %s AND d.{col['status']} = "
            f"'{PENDING}' AND d.{col['lease_until']} "
        )
        # The first number free, below ``most`` (if fewer than ``most`` are taken): a row
        # inserted, or one whose lease ran out taken over. Two takers of one number: the
        # second takes none (it waits for the first's row, then finds it taken).
        numbers = (
            "WITH RECURSIVE numbers (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM "
            "numbers WHERE n + 1 < %s) "
        )
        first_free = {
            leased: f"FROM {table} d, numbers WHERE {ours}{'= %s' if leased else 'IS NULL'} "
            f"AND (SELECT count(*) FROM {slots} s WHERE {live}) < %s "
            f"AND NOT EXISTS (SELECT 1 FROM {slots} s WHERE {live} "
            f"AND s.{slot['number']} = numbers.n) ORDER BY numbers.n LIMIT 1"
            for leased in (False, True)
        }
        # Every slot taken (for the delivery's key): each is marked wanted; how many.
        self.want_slots = {
            leased: f"UPDATE {slots} SET {slot['wanted']} = TRUE WHERE {slot['handler']} = %s "
            f"AND {slot['lease_until']} > %s AND {slot['key']} = (SELECT "
            f"d.{col['concurrency_key']} FROM {table} d WHERE "
            f"{ours}{'= %s' if leased else 'IS NULL'})"
            for leased in (False, True)
        }
        held = f"WHERE {slot['handler']} = %s AND {slot['number']} = %s AND {slot['event']} = %s"
        self.renew_slot = f"UPDATE {slots} SET {slot['lease_until']} = %s {held}"
        columns = ", ".join(slot[f] for f in SLOT_COLUMNS)
        # MySQL and MariaDB have no ON CONFLICT, MySQL no RETURNING: in steps, in one
        # transaction. The key and the number free; the row inserted or (another has the
        # number) taken over if its lease ran out. Freed: read whether wanted, deleted.
        self.slot_in_steps = connection.vendor == "mysql"
        if self.slot_in_steps:
            self.free_number = {
                leased: f"{numbers}SELECT d.{col['concurrency_key']}, numbers.n {where}"
                for leased, where in first_free.items()
            }
            self.insert_slot = f"INSERT INTO {slots} ({columns}) VALUES ({_marks(SLOT_COLUMNS)})"
            self.take_over_slot = (
                f"UPDATE {slots} SET "
                + ", ".join(f"{slot[f]} = %s" for f in SLOT_COLUMNS[3:])
                + f" WHERE {slot['handler']} = %s AND {slot['key']} = %s "
                f"AND {slot['number']} = %s AND {slot['lease_until']} <= %s"
            )
            # Found by its unique key (the delivery's concurrency key read), since InnoDB
            # locks every row a locking statement looks at: found by the handler alone,
            # two runners freeing their slots would wait for each other's.
            found = (
                f"WHERE {slot['handler']} = %s AND {slot['key']} = (SELECT "
                f"d.{col['concurrency_key']} FROM {table} d WHERE d.{col['event']} = %s AND "
                f"d.{col['handler']} = %s) AND {slot['number']} = %s AND {slot['event']} = %s"
            )
            self.free_slot = [
                f"SELECT {slot['wanted']} FROM {slots} {found} FOR UPDATE",
                f"DELETE FROM {slots} {found}",
            ]
            return
        self.take_slot = {
            leased: f"{numbers}INSERT INTO {slots} ({columns}) "
            f"SELECT d.{col['handler']}, d.{col['concurrency_key']}, numbers.n, "
            f"d.{col['event']}, %s, %s, FALSE {first_free[leased]} "
            f"ON CONFLICT ({slot['handler']}, {slot['key']}, {slot['number']}) DO UPDATE SET "
            + ", ".join(f"{slot[f]} = EXCLUDED.{slot[f]}" for f in SLOT_COLUMNS[3:])
            + f" WHERE {slots}.{slot['lease_until']} <= %s RETURNING {slot['number']}"
            for leased in (False, True)
        }
        self.free_slot = [f"DELETE FROM {slots} {held} RETURNING {slot['wanted']}"]

    def claim_in(
        self,
        queues: int,
        paused: bool,
        capped: int = 0,
        in_flight: bool = False,
        proceeding: int | None = None,
        window: bool = True,
    ) -> list[str]:
        """The claim's statements, for deliveries of any queue (0) or of ``queues`` queues,
        leaving out paused handlers' if ``paused`` (some handler may be: the check costs
        the claim's plan its speed, so it is left out while none is); of the ``capped``
        handlers with a max_concurrency (none: no check), none whose slots (for their
        key) are all taken, and no more than are free (``in_flight``: counting the
        deliveries leased, not the slots taken); if some handler is ordered
        (``proceeding``: how many of those proceed past a dead delivery; None: none is
        ordered), none with an unfinished delivery before it, and (none capped, and a
        ``window``) of the first due ones only, the first ones of no more keys than a
        parameter after the limit says."""
        try:
            return self._claims[queues, paused, capped, in_flight, proceeding, window]
        except KeyError:
            gate = {"names": _marks(range(capped)), "most": "WHEN %s THEN %s " * capped}
            ordered = proceeding is not None
            windowed = ordered and window and not capped
            where = (
                (self.unpaused if paused else "")
                + (self.capped[in_flight].format(**gate) if capped else "")
                + (
                    f"AND {self._first(self.table, proceeding or 0)} "
                    if ordered and not windowed
                    else ""
                )
                + (self.in_queues.format(_marks(range(queues))) if queues else "")
            )
            if capped:
                pick = self.ranked[in_flight].format(where, **gate)
            elif windowed:
                pick = self.window.format(where, first=self._first("w", proceeding or 0))
            else:
                pick = self.pick.format(where)
            built = [self.claim[0].format(pick), *self.claim[1:]]
            self._claims[queues, paused, capped, in_flight, proceeding, window] = built
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
_RESULT = _delivery_field("result")
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
    keys: Sequence[str] | None = None,
    sequences: Sequence[int | None] | None = None,
) -> None:
    """Insert an event and one pending delivery per handler, due from ``due`` (default
    ``now``), claimed in order of ``priority`` (higher first), in ``queue``, each with
    its key in ``keys`` (default: none) and, ordered, its number in ``sequences``. ``wake``:
    on PostgreSQL, ``pg_notify`` in the same statement wakes the listening workers as the
    transaction commits (one per transaction, none if a savepoint holding it rolls back)."""
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
    with _storing_cursor(connection) as cursor:
        if not handlers:
            cursor.execute(sql.insert_event, params)
            return
        deliveries = sql.insert_deliveries + ", ".join([sql.delivery_values] * len(handlers))
        unkeyed = [""] * len(handlers)
        for name, key, number in zip(
            handlers, keys or unkeyed, sequences or [None] * len(handlers), strict=True
        ):
            params += [
                event, name, PENDING, 0, 0, 0, due_at, "", "", when, priority, queue, key, number
            ]  # fmt: skip
        if sql.one_statement:
            # One round trip: the event's INSERT rides in a WITH clause, the wake-up after it.
            if wake:
                stored = f"WITH event AS ({sql.insert_event}), deliveries AS ({deliveries}) "
                stored += f"SELECT pg_notify('{CHANNEL}', '')"
            else:
                stored = f"WITH event AS ({sql.insert_event}) {deliveries}"
            cursor.execute(stored, params)
        else:
            cursor.execute(sql.insert_event, params[: len(EVENT_COLUMNS)])
            cursor.execute(deliveries, params[len(EVENT_COLUMNS) :])


def _storing_cursor(connection: BaseDatabaseWrapper) -> Any:
    """The cursor ``store`` writes with: on PostgreSQL (psycopg 3) one whose statements
    the server plans once per connection (``PREPARED_STATEMENTS``), which saves it more
    than a third of an event's cost; else Django's own."""
    prepared = connection.vendor == "postgresql" and conf.settings.PREPARED_STATEMENTS
    return (prepared and compat.preparing_cursor(connection)) or connection.cursor()


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


def done_many(
    using: str, ids: Sequence[int], now: dt.datetime, results: Mapping[int, Any] | None = None
) -> None:
    """Mark these deliveries (locked by this transaction) done, keeping in the same
    statement the ``results`` (id -> a JSON value) of those that have one."""
    if not ids:
        return
    connection = connections[using]
    sql = _statements(connection)
    head, params = sql.done_many, [DONE, _WHEN.get_db_prep_value(now, connection)]
    kept = [(pk, results[pk]) for pk in ids if results and pk in results]
    if kept:
        head = sql.done_keeping.format("WHEN %s THEN %s " * len(kept))
        for pk, value in kept:
            params += [pk, _RESULT.get_db_prep_value(value, connection)]
    with connection.cursor() as cursor:
        cursor.execute(f"{head}({_marks(ids)}){sql.lazy}", [*params, *ids])


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
    dt.datetime, str,
]  # fmt: skip


def claim(
    using: str,
    limit: int,
    lease: dt.datetime,
    due: dt.datetime,
    queues: Sequence[str] = (),
    *,
    paused: bool = True,
    capped: Sequence[tuple[str, int]] = (),
    now: dt.datetime | None = None,
    in_flight: bool = False,
    ordered: Sequence[tuple[str, bool]] = (),
    keys: int = 0,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (of ``queues`` only, if any; not of paused
    handlers, unless ``paused`` is False: none is; of the ``capped`` handlers, (name,
    max_concurrency), no more of one key than had slots free ``now``, or, ``in_flight``,
    than were not leased; of the ``ordered`` handlers, (name, whether a key waits behind
    a dead delivery), none behind an unfinished one of its key, and the first ones of
    no more than ``keys`` keys, unless some handler is capped), highest priority first,
    then in the order they fell due, with their events.

    Each row: (id, handler, runs, calls, event id, type, payload, correlation id, causation id,
    trace context, when the delivery was stored, its concurrency key).
    """
    connection = connections[using]
    gate: list[Any] = []
    ranked: list[Any] = []
    if capped:
        live = _WHEN.get_db_prep_value(now or due, connection)
        names, most = [name for name, _ in capped], [v for pair in capped for v in pair]
        gate, ranked = [*names, live, *most], [*names, *most, live]
    proceeding = [name for name, waits in ordered if not waits]
    head = [_WHEN.get_db_prep_value(lease, connection), _WHEN.get_db_prep_value(due, connection)]
    sql = _statements(connection)
    shape = (len(queues), paused, len(capped), in_flight, len(proceeding) if ordered else None)
    if ordered and not capped:
        # The first due ones looked at; if none of them can run (all behind others of their
        # keys: the first ones failed, due again later), every due one.
        windowed = [*head, *gate, *queues, limit * LOOK_AHEAD, *proceeding, keys, limit]
        rows = _leased(connection, sql.claim_in(*shape), windowed)
        if rows:
            return rows
    params = [*head, *gate, *(proceeding if ordered else []), *queues, limit, *ranked]
    return _leased(connection, sql.claim_in(*shape, window=False), params)


def follow(
    using: str,
    firsts: Sequence[int],
    limit: int,
    lease: dt.datetime,
    due: dt.datetime,
    queues: Sequence[str] = (),
    *,
    proceeding: Sequence[str] = (),
) -> list[Claimed]:
    """Lease, after the ``firsts`` of their keys (ordered deliveries just claimed under
    ``lease``), up to ``limit`` of the deliveries that follow them in their keys, due
    (and in ``queues``, if any) with none between that is not (leased, not due, dead,
    of another queue), in the order they were stored, with their events (as ``claim``).
    ``proceeding``: the handlers whose keys go on past a dead delivery."""
    connection = connections[using]
    sql = _statements(connection)
    when = _WHEN.get_db_prep_value(due, connection)
    params = [
        _WHEN.get_db_prep_value(lease, connection),
        *firsts, when, *queues, *proceeding, when, *queues, limit,
    ]  # fmt: skip
    return _leased(connection, sql.follow_in(len(firsts), len(queues), len(proceeding)), params)


def _leased(
    connection: BaseDatabaseWrapper, statements: list[str], params: list[Any]
) -> list[Claimed]:
    """Run a claim's statements (one; or pick, lease and read), with its params (the lease
    first): the rows leased, with their events."""
    with connection.cursor() as cursor:
        if len(statements) == 1:
            cursor.execute(statements[0], params)
            rows = cursor.fetchall()
        else:
            pick, lease_them, read = statements
            with transaction.atomic(using=connection.alias):
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
            _datetime(stored), key,
        )
        for (pk, handler, runs, calls, event, kind, payload, correlation, causation, trace,
             stored, key) in rows
    ]  # fmt: skip


def take_slot(
    using: str,
    event_id: UUID,
    handler: str,
    lease: dt.datetime | None,
    most: int,
    until: dt.datetime,
    now: dt.datetime,
) -> int | None:
    """Take a free slot of ``handler`` (one of ``most``, for the delivery's concurrency
    key) for its delivery of ``event_id``, pending under ``lease`` (None: unleased),
    until ``until``: its number; None if every slot was taken, the delivery is not
    pending under ``lease``, or another took the number first."""
    connection = connections[using]
    when = _WHEN.get_db_prep_value(now, connection)
    held = [_ID.get_db_prep_value(event_id, connection), handler]
    if lease is not None:
        held.append(_WHEN.get_db_prep_value(lease, connection))
    sql, end = _statements(connection), _WHEN.get_db_prep_value(until, connection)
    with connection.cursor() as cursor:
        if sql.slot_in_steps:
            return _take_slot_in_steps(cursor, sql, held, lease is not None, most, end, when)
        params = [most, end, when, *held, when, most, when, when]
        cursor.execute(sql.take_slot[lease is not None], params)
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def _take_slot_in_steps(
    cursor: Any, sql: Statements, held: list[Any], leased: bool, most: int, until: Any, now: Any
) -> int | None:
    """``take_slot`` as MySQL and MariaDB can: the first number free, then its row inserted
    or, if another has it, taken over if its lease ran out."""
    using = cursor.db.alias
    with transaction.atomic(using=using):
        cursor.execute(sql.free_number[leased], [most, *held, now, most, now])
        row = cursor.fetchone()
        if row is None:
            return None
        key, number = row
        event, handler = held[:2]
        slot = [handler, key, number]
        try:
            with transaction.atomic(using=using):
                cursor.execute(sql.insert_slot, [*slot, event, until, now, False])
        except IntegrityError:  # another's row: taken over if its lease ran out
            cursor.execute(sql.take_over_slot, [event, until, now, False, *slot, now])
            if not cursor.rowcount:  # rows matched (Django's MySQL connections count those)
                return None
    return int(number)


def want_slots(
    using: str, event_id: UUID, handler: str, lease: dt.datetime | None, now: dt.datetime
) -> int:
    """Mark wanted the slots of ``handler`` taken ``now`` for the concurrency key of its
    delivery of ``event_id`` (pending under ``lease``); how many are taken (0 if the
    delivery is not pending under ``lease``)."""
    connection = connections[using]
    params = [
        handler, _WHEN.get_db_prep_value(now, connection),
        _ID.get_db_prep_value(event_id, connection), handler,
    ]  # fmt: skip
    if lease is not None:
        params.append(_WHEN.get_db_prep_value(lease, connection))
    with connection.cursor() as cursor:
        cursor.execute(_statements(connection).want_slots[lease is not None], params)
        return int(cursor.rowcount)


def free_slot(using: str, event_id: UUID, handler: str, number: int) -> bool:
    """Free the slot ``number`` of ``handler`` that its delivery of ``event_id`` holds, in
    the current transaction; True if another delivery wanted it."""
    connection = connections[using]
    sql, event = _statements(connection), _ID.get_db_prep_value(event_id, connection)
    params = (
        [handler, event, handler, number, event] if sql.slot_in_steps else [handler, number, event]
    )
    wanted = False
    with connection.cursor() as cursor:
        for statement in sql.free_slot:
            cursor.execute(statement, params)
            wanted = wanted or any(row[0] for row in cursor.fetchall())
    return wanted


def renew_slot(using: str, event_id: UUID, handler: str, number: int, until: dt.datetime) -> bool:
    """Hold the slot ``number`` of ``handler`` that its delivery of ``event_id`` holds until
    ``until``; False if it does not hold it."""
    connection = connections[using]
    params = [
        _WHEN.get_db_prep_value(until, connection), handler, number,
        _ID.get_db_prep_value(event_id, connection),
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_statements(connection).renew_slot, params)
        return bool(cursor.rowcount)


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
