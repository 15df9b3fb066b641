"""Whose fault a failure is: a lost connection is waited out, anything else is the input's."""

import json

import pytest
import redis
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from django.test import override_settings

from messagebus.exceptions import Reject
from messagebus.external import transports
from messagebus.external.failures import is_outage
from messagebus.external.inbound import storable
from messagebus.external.limits import nested_deeper
from messagebus.processes.worker import lasting


def not_migrated() -> ProgrammingError:
    error = ProgrammingError('relation "messagebus_inboxmessage" does not exist')
    error.__cause__ = type("UndefinedTable", (Exception,), {"sqlstate": "42P01"})()
    return error


def from_mysql(kind: type[DatabaseError], number: int, message: str) -> DatabaseError:
    """``kind`` as Django raises it from MySQL's or MariaDB's error ``number``: the driver's
    error (mysqlclient's, PyMySQL's) as its cause, with the number as its first argument."""
    error = kind(number, message)
    error.__cause__ = Exception(number, message)
    return error


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("server closed the connection unexpectedly"),
        InterfaceError("connection already closed"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        not_migrated(),
        from_mysql(ProgrammingError, 1146, "Table 'shop.messagebus_inboxmessage' doesn't exist"),
    ],
    ids=type,
)
def test_a_lost_connection_is_an_outage(error):
    assert is_outage(error)


def test_a_transports_connection_errors_are_outages_once_it_is_built():
    with override_settings(MESSAGEBUS={"EXTERNAL_URL": "redis://127.0.0.1:1/0"}):
        transports.get()  # built; it connects only when used
    assert is_outage(redis.ConnectionError("Error 111 connecting"))
    assert is_outage(redis.TimeoutError("Timeout reading from socket"))


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError('new row violates check constraint "batch_qty_positive"'),
        DataError("integer out of range"),
        ProgrammingError("syntax error at or near"),
        ValueError("A string literal cannot contain NUL (0x00) characters."),
        TypeError("unhashable type: 'list'"),
        RecursionError("maximum recursion depth exceeded"),
        IndexError("pop from empty list"),
        Reject("never"),
        redis.ResponseError("WRONGTYPE"),
        from_mysql(DataError, 1406, "Data too long for column 'qty' at row 1"),
    ],
    ids=type,
)
def test_anything_else_is_the_inputs_fault(error):
    assert not is_outage(error)


@pytest.mark.parametrize(
    ("error", "misconfigured"),
    [
        (from_mysql(OperationalError, 1049, "Unknown database 'shop'"), True),
        (from_mysql(OperationalError, 1045, "Access denied for user 'app'@'10.0.0.5'"), True),
        (
            from_mysql(ProgrammingError, 1146, "Table 'shop.messagebus_delivery' doesn't exist"),
            True,
        ),
        (from_mysql(OperationalError, 2003, "Can't connect to MySQL server on '10.0.0.5'"), False),
        (from_mysql(OperationalError, 2013, "Lost connection to server during query"), False),
    ],
)
def test_a_worker_stops_on_mysqls_misconfigurations_and_waits_out_its_outages(error, misconfigured):
    assert lasting(error) is misconfigured


@pytest.mark.parametrize(
    ("body", "deeper"),
    [
        (b"[" * 101 + b"]" * 101, True),
        (b"[" * 100 + b"]" * 100, False),
        (b"[" * 200_000, True),
        (json.dumps({"a": "[" * 500, "b": [[{"c": "]]]]"}]]}).encode(), False),
        (b'{"a": "\\"[[[' + b"[" * 200 + b'"}', False),  # brackets in a string
        (b"]" * 500 + b"[" * 50, False),
    ],
)
def test_nesting_is_read_from_the_bytes(body, deeper):
    assert nested_deeper(body, 100) is deeper


def test_what_is_stored_holds_no_nul():
    assert storable("b\x00c") == "b\N{REPLACEMENT CHARACTER}c"
    assert storable("x" * 300, 255) == "x" * 255
