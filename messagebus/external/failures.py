"""Whose fault a failure is: a lost connection's, or the input's.

A lost connection to the database or to a broker is an *outage*: nothing is
wrong with the message or the delivery in hand, so it is waited out and tried
again. Anything else (a value the database refuses, a body that does not
decode, a domain error) is the input's fault: trying it again fails the same
way, so it is set aside with the reason at once.
"""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError, OperationalError

from . import transports

# A lost or refused connection, whichever library reports it: the database's
# (Django wraps the driver's), or a socket's, which is an OSError.
LOST_CONNECTION: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, OSError)
# SQLSTATEs of a schema the code does not find (not migrated yet): no input is to blame.
# SQLite says "no such table" with an OperationalError; MySQL and MariaDB, whose drivers
# give no SQLSTATE, error numbers: no such table (1146), no such column (1054).
NOT_MIGRATED = ("42P01", "42703", "3F000")
NOT_MIGRATED_NUMBERS = (1146, 1054)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost connection to the database or a broker (or a
    database not migrated yet, which waiting for an operator fixes too).

    ``IntegrityError``, ``DataError``, ``ProgrammingError``, ``ValueError``,
    ``RecursionError`` and the rest are not: they are the input's fault.
    """
    if isinstance(exc, LOST_CONNECTION + transports.connection_errors()):
        return True
    return isinstance(exc, DatabaseError) and (
        sqlstate(exc) in NOT_MIGRATED or error_number(exc) in NOT_MIGRATED_NUMBERS
    )


def sqlstate(exc: DatabaseError) -> str:
    """The SQLSTATE of the driver's error behind ``exc`` (PostgreSQL's), or ''."""
    return str(getattr(exc.__cause__, "sqlstate", None) or "")


def error_number(exc: DatabaseError) -> int | None:
    """The error number of the driver's error behind ``exc`` (MySQL's and MariaDB's,
    as mysqlclient and PyMySQL give it: their first argument), or None."""
    args = getattr(exc.__cause__, "args", ())
    return args[0] if args and isinstance(args[0], int) else None
