"""Prometheus: the bus's counts (``messagebus.observe.metrics``) and the outbox's figures,
served.

What the scraping process reads from the outbox, at most every ``OUTBOX_EVERY``
seconds (one query, cached): ``messagebus_outbox_deliveries{status}``,
``messagebus_outbox_due``, ``messagebus_outbox_paused`` (pending deliveries of paused
handlers) and ``messagebus_outbox_lag_seconds`` (the oldest due delivery's wait); and,
where the transport tells it (Kafka), from the broker as often:
``messagebus_consumer_lag{channel, group, partition}``, the messages a consuming
group has not taken in yet.

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

__all__ = [
    "Collector", "ConsumerLagCollector", "OutboxCollector", "allowed", "registry", "serve",
    "view",
]  # fmt: skip

OUTBOX_EVERY = 15.0  # seconds between the outbox queries (and the broker's) of a scraped process


class _Cached:
    """Figures read at most once per OUTBOX_EVERY seconds (``read``; None: none to give)."""

    def __init__(self) -> None:
        self._read_at = float("-inf")
        self._figures: Any = None
        self._lock = threading.Lock()

    def read(self) -> Any:
        raise NotImplementedError

    def _read(self) -> Any:
        with self._lock:
            if time.monotonic() - self._read_at >= OUTBOX_EVERY:
                self._figures = self.read()
                self._read_at = time.monotonic()
            return self._figures


class OutboxCollector(_Cached):
    """The outbox's figures (``health.figures``), read once per OUTBOX_EVERY seconds."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__()
        self.using = using

    def read(self) -> dict[str, Any] | None:
        try:
            return health.figures(self.using)
        except DatabaseError:
            return None  # the scrape goes on without them

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


class ConsumerLagCollector(_Cached):
    """Each consuming group's lag per partition (``health.consumer_lag``), where the
    transport tells it, read once per OUTBOX_EVERY seconds."""

    def read(self) -> list[dict[str, Any]] | None:
        return health.consumer_lag() if health.measures_lag() else None

    def collect(self) -> Iterator[Any]:
        found = self._read()
        if found is None:
            return
        lag = GaugeMetricFamily(
            "messagebus_consumer_lag",
            "Messages of a partition a consuming group has not taken in yet",
            labels=["channel", "group", "partition"],
        )
        for row in found:
            lag.add_metric([row["channel"], row["group"], str(row["partition"])], row["messages"])
        yield lag


_outbox = OutboxCollector()
_lag = ConsumerLagCollector()


def registry() -> Any:
    """What a scrape of this process answers: its counts and prometheus-client's
    process figures (all processes' counts with PROMETHEUS_MULTIPROC_DIR), the
    outbox's figures, and the consumers' lag where the transport tells it."""
    found = prometheus.CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(found)  # type: ignore[no-untyped-call]
    else:
        found.register(_Default())
        found.register(Collector())
    found.register(_outbox)
    found.register(_lag)
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
