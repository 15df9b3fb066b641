"""Prometheus: the bus's counts (``messagebus.observe.metrics``) and the outbox's figures,
served.

What the scraping process reads from the outbox, at most every ``OUTBOX_EVERY``
seconds (one query, cached): ``messagebus_outbox_deliveries{status}``,
``messagebus_outbox_due``, ``messagebus_outbox_paused`` (pending deliveries of paused
handlers) and ``messagebus_outbox_lag_seconds`` (the oldest due delivery's wait).

``view`` serves them at ``/metrics`` to the addresses in
MESSAGEBUS["METRICS_ALLOWED_IPS"] (none: 404); ``serve(port)`` in a process
of its own (``messagebus worker --metrics-port``, on 127.0.0.1 unless ``--metrics-bind``).
With the environment variable ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn's processes, say), each
process writes its counts there and whichever answers a scrape adds them up.
``Collector()`` is this process's counts, to register with a registry of your own.
"""

from __future__ import annotations

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

from .. import conf
from ..observe.metrics import Collector
from . import health

try:
    import prometheus_client as prometheus
    from prometheus_client import multiprocess
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the extra is not installed: nothing is served
    prometheus = None  # type: ignore[assignment]

__all__ = ["Collector", "OutboxCollector", "allowed", "registry", "serve", "view"]

OUTBOX_EVERY = 15.0  # seconds between the outbox queries of a scraped process


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
            "messagebus_outbox_paused", "Pending deliveries of paused handlers", figures["paused"]
        )
        yield GaugeMetricFamily(
            "messagebus_outbox_lag_seconds",
            "How long the oldest due delivery has waited",
            figures["lag_seconds"],
        )

    def _read(self) -> dict[str, Any] | None:
        with self._lock:
            if time.monotonic() - self._read_at >= OUTBOX_EVERY:
                try:
                    self._figures = health.figures(self.using)
                except DatabaseError:
                    self._figures = None  # the scrape goes on without them
                self._read_at = time.monotonic()
            return self._figures


_outbox = OutboxCollector()


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
