"""What the bus counts as it goes, in every process that handles messages, with
prometheus-client installed (the ``metrics`` extra; without it nothing is counted):

- ``messagebus_commands_total{type, outcome}``: ok, rejected, failed;
- ``messagebus_deliveries_total{handler, outcome}``: runs ended done,
  rescheduled, postponed or dead;
- ``messagebus_delivery_duration_seconds{handler}``: a handler's call;
- ``messagebus_retries_total{handler}``: failed calls (each retried, or ending its run);
- ``messagebus_dead_letters_total{handler}``;
- ``messagebus_breaker_changes_total{handler, state}``: circuit breakers opened,
  reopened (a failed probe) and closed;
- ``messagebus_commit_to_handler_seconds{handler}``: from an event's storing to
  the start of its delivery's first run, by a worker or a Celery task.

``messagebus.ops.prometheus`` serves them, with the outbox's figures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from ..core.messages import Message, message_type_name

try:
    import prometheus_client as prometheus
except ImportError:  # the extra is not installed: nothing is counted
    prometheus = None  # type: ignore[assignment]

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _Off:
    """Stands in for a metric when prometheus-client is not installed."""

    def __call__(self, *labels: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


class _Kept:
    """A metric whose labelled children are kept (``metric(*labels)``): the bus counts
    on every message, and ``labels()`` would check and look them up each time."""

    def __init__(self, metric: Any) -> None:
        _mine.append(metric)
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.metric.labels(*labels)
        return child


_mine: list[Any] = []  # in no registry of prometheus-client's: see registry()


def _counter(name: str, text: str, labels: list[str]) -> Any:
    return _Kept(prometheus.Counter(name, text, labels, registry=None)) if prometheus else _Off()


def _histogram(name: str, text: str, labels: list[str]) -> Any:
    if prometheus is None:
        return _Off()
    return _Kept(prometheus.Histogram(name, text, labels, buckets=BUCKETS, registry=None))


_commands = _counter("messagebus_commands", "Commands handled, by outcome", ["type", "outcome"])
_queries = _counter("messagebus_queries", "Queries answered, by outcome", ["type", "outcome"])
_deliveries = _counter(
    "messagebus_deliveries", "Delivery runs ended, by outcome", ["handler", "outcome"]
)
_calls = _histogram("messagebus_delivery_duration_seconds", "A handler's call", ["handler"])
_retries = _counter("messagebus_retries", "Failed calls of event handlers", ["handler"])
_dead = _counter("messagebus_dead_letters", "Deliveries that died", ["handler"])
_breaker = _counter(
    "messagebus_breaker_changes",
    "Circuit breakers opened, opened again after a failed probe, and closed",
    ["handler", "state"],
)
_waited = _histogram(
    "messagebus_commit_to_handler_seconds",
    "From an event's storing to its delivery's first run, by a worker or a Celery task",
    ["handler"],
)


def command(type_name: str, outcome: str) -> None:
    """A command handled: ``ok``, ``rejected`` or ``failed``."""
    _commands(type_name, outcome).inc()


_ok: dict[type[Message], Any] = {}  # by class: the path every command takes


def handled(cls: type[Message]) -> None:
    """A command of class ``cls`` handled without error (``command(name, "ok")``)."""
    child = _ok.get(cls)
    if child is None:
        child = _ok[cls] = _commands(message_type_name(cls), "ok")
    child.inc()


def query(type_name: str, outcome: str) -> None:
    """A query asked: ``ok``, ``rejected`` or ``failed``."""
    _queries(type_name, outcome).inc()


_answered: dict[type[Message], Any] = {}


def answered(cls: type[Message]) -> None:
    """A query of class ``cls`` answered without error (``query(name, "ok")``)."""
    child = _answered.get(cls)
    if child is None:
        child = _answered[cls] = _queries(message_type_name(cls), "ok")
    child.inc()


def call(handler: str, seconds: float) -> None:
    """A call of an event handler that returned."""
    _calls(handler).observe(seconds)


def claimed(claim: Any, now: dt.datetime) -> None:
    """Time a claimed delivery's wait from its event's storing, if this is its first run."""
    if claim.runs == 0 and claim.stored is not None:
        waited(claim.ref.handler, claim.stored, now)


def waited(handler: str, stored: dt.datetime, now: dt.datetime) -> None:
    """A delivery's first run starts at ``now``; its event was stored at ``stored``."""
    _waited(handler).observe(max(0.0, (now - stored).total_seconds()))


def breaker(handler: str, state: str) -> None:
    """A circuit breaker changed: ``opened``, ``reopened`` or ``closed``."""
    _breaker(handler, state).inc()


def failed(handler: str) -> None:
    """A call of an event handler that raised."""
    _retries(handler).inc()


def ended(handler: str, outcome: str) -> None:
    """A delivery run ended: ``done``, ``rescheduled``, ``postponed`` or ``dead``."""
    _deliveries(handler, outcome).inc()
    if outcome == "dead":
        _dead(handler).inc()


class Collector:
    """The bus's counts in this process, to register with a registry of your own."""

    def collect(self) -> Iterator[Any]:
        for metric in _mine:
            yield from metric.collect()
