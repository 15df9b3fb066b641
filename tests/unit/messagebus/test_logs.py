"""What the bus's logs look like where nobody configured them, and which errors get a
traceback."""

import logging
import socket

import psycopg
import pytest
from django.db import DatabaseError, DataError, OperationalError

from messagebus.exceptions import BrokerUnreachable
from messagebus.observe.logs import ensure_a_handler, stack_once, tells_more


def raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise error from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        raised_from(OperationalError("connection failed"), psycopg.OperationalError("refused")),
        psycopg.OperationalError('connection to server at "10.0.0.5", port 5432 failed'),
        raised_from(DatabaseError("gone"), ConnectionRefusedError(111, "Connection refused")),
        socket.gaierror(-2, "Name or service not known"),
        TimeoutError("timed out"),
        BrokerUnreachable("the broker does not answer"),
    ],
    ids=repr,
)
def test_a_server_that_cannot_be_reached_is_one_line(exc):
    assert not tells_more(exc)
    assert not stack_once(exc, 1)


@pytest.mark.parametrize("exc", [DataError("value out of range"), ValueError("odd")], ids=repr)
def test_anything_else_gets_its_traceback_on_the_first_failure_only(exc):
    assert tells_more(exc)
    assert [stack_once(exc, n) for n in (1, 2, 3)] == [True, False, False]


@pytest.fixture
def no_logging_configured(monkeypatch):
    """The root and ``messagebus`` loggers as a project with no LOGGING leaves them: call it
    in the test's body (pytest's own capturing handlers are on the root until then)."""
    bus, root = logging.getLogger("messagebus"), logging.getLogger()

    def unconfigure() -> logging.Logger:
        monkeypatch.setattr(root, "handlers", [])
        monkeypatch.setattr(bus, "handlers", [])
        monkeypatch.setattr(bus, "level", logging.NOTSET)
        return bus

    return unconfigure


def test_with_no_logging_configured_the_bus_gets_a_handler_of_its_own(no_logging_configured):
    bus = no_logging_configured()

    ensure_a_handler()
    ensure_a_handler()  # ready() may run twice: still one

    [handler] = bus.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert bus.getEffectiveLevel() == logging.INFO


def test_a_configured_root_handler_stays_in_charge(no_logging_configured):
    bus = no_logging_configured()
    logging.getLogger().handlers.append(logging.NullHandler())

    ensure_a_handler()

    assert bus.handlers == []
    assert bus.level == logging.NOTSET
