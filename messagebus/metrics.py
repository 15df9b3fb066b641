"""Prometheus metrics, with prometheus-client installed (the ``metrics`` extra).

What the bus counts as it goes, in every process that handles messages:

- ``messagebus_commands_total{type, outcome}``: ok, rejected, failed;
- ``messagebus_deliveries_total{handler, outcome}``: runs ended done,
  rescheduled, postponed or dead;
- ``messagebus_delivery_duration_seconds{handler}``: a handler's call;
- ``messagebus_retries_total{handler}``: failed calls (each retried, or ending its run);
- ``messagebus_dead_letters_total{handler}``;
- ``messagebus_commit_to_handler_seconds{handler}``: from an event's storing to
  the start of its delivery's first run, by a worker or a Celery task.

And what the scraping process reads from the outbox, at most every
``OUTBOX_EVERY`` seconds (one query, cached): ``messagebus_outbox_deliveries{status}``,
``messagebus_outbox_due`` and ``messagebus_outbox_lag_seconds`` (the oldest
due delivery's wait).

``view`` serves them at ``/metrics`` to the addresses in
MESSAGEBUS["METRICS_ALLOWED_IPS"] (none: 404); ``serve(port)`` in a process
of its own (``messagebus worker --metrics-port``, on 127.0.0.1 unless ``--metrics-bind``).
With the environment variable ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn's processes, say), each
process writes its counts there and whichever answers a scrape adds them up.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import conf
from .messages import Message, message_type_name

try:
    import prometheus_client as prometheus
    from prometheus_client import multiprocess
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the extra is not installed: nothing is counted
    prometheus = None  # type: ignore[assignment]

OUTBOX_EVERY = 15.0  # seconds between the outbox queries of a scraped process
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
_deliveries = _counter(
    "messagebus_deliveries", "Delivery runs ended, by outcome", ["handler", "outcome"]
)
_calls = _histogram("messagebus_delivery_duration_seconds", "A handler's call", ["handler"])
_retries = _counter("messagebus_retries", "Failed calls of event handlers", ["handler"])
_dead = _counter("messagebus_dead_letters", "Deliveries that died", ["handler"])
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


def failed(handler: str) -> None:
    """A call of an event handler that raised."""
    _retries(handler).inc()


def ended(handler: str, outcome: str) -> None:
    """A delivery run ended: ``done``, ``rescheduled``, ``postponed`` or ``dead``."""
    _deliveries(handler, outcome).inc()
    if outcome == "dead":
        _dead(handler).inc()


class OutboxCollector:
    """The outbox's figures (``health.figures``), read once per OUTBOX_EVERY seconds."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using
        self._read_at = float("-inf")
        self._figures: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        figures = self._read()
        if figures is None:
            return
        by_status = GaugeMetricFamily(
            "messagebus_outbox_deliveries", "Deliveries in the outbox, by status", labels=["status"]
        )
        for status, count in figures["statuses"].items():
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily("messagebus_outbox_due", "Deliveries due", figures["due"])
        yield GaugeMetricFamily(
            "messagebus_outbox_lag_seconds",
            "How long the oldest due delivery has waited",
            figures["lag_seconds"],
        )

    def _read(self) -> dict[str, Any] | None:
        from . import health  # the models: imported once apps are ready

        with self._lock:
            if time.monotonic() - self._read_at >= OUTBOX_EVERY:
                try:
                    self._figures = health.figures(self.using)
                except DatabaseError:
                    self._figures = None  # the scrape goes on without them
                self._read_at = time.monotonic()
            return self._figures


_outbox = OutboxCollector()


class Collector:
    """The bus's counts in this process, to register with a registry of your own."""

    def collect(self) -> Iterator[Any]:
        for metric in _mine:
            yield from metric.collect()


def registry() -> Any:
    """What a scrape of this process answers: its counts and prometheus-client's
    process figures (all processes' counts with PROMETHEUS_MULTIPROC_DIR), and the
    outbox's figures."""
    found = prometheus.CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(found)  # type: ignore[no-untyped-call]
    else:
        found.register(_Default())
        found.register(Collector())
    found.register(_outbox)
    return found


class _Default:
    """prometheus-client's own figures of this process (CPU, memory, the collector)."""

    def collect(self) -> Iterator[Any]:
        yield from prometheus.REGISTRY.collect()


def allowed(address: str) -> bool:
    """Whether MESSAGEBUS["METRICS_ALLOWED_IPS"] (addresses or networks) lets ``address`` in."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    networks = conf.settings.METRICS_ALLOWED_IPS
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


@never_cache
@require_GET
def view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: off (404) unless METRICS_ALLOWED_IPS names someone; 403 to others."""
    if prometheus is None or not conf.settings.METRICS_ALLOWED_IPS:
        raise Http404("metrics are off")
    if not allowed(request.META.get("REMOTE_ADDR", "")):
        return HttpResponseForbidden("metrics are not served to this address")
    body = prometheus.generate_latest(registry())
    return HttpResponse(body, content_type=prometheus.CONTENT_TYPE_LATEST)


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve this process's metrics on ``address``:``port`` (a worker's, in a thread of its
    own): this machine only unless told otherwise, since it answers anyone who connects."""
    if prometheus is None:
        raise ImportError(
            "metrics need prometheus-client: pip install 'django-messagebus[metrics]'"
        )
    prometheus.start_http_server(port, addr=address, registry=registry())
