"""The outbox's health, for a load balancer or a monitor: ``GET /health/``,
``messagebus status``, the admin's outbox dashboard.

"ok" while the database answers and the outbox keeps up; "degraded" when the
oldest due delivery has waited longer than HEALTH_MAX_LAG seconds, more than
HEALTH_MAX_DEAD deliveries are dead, or an ordered handler's key waits behind a dead
delivery ("key K of H blocked by delivery N"); "down" when the database does not answer
(within HEALTH_TIMEOUT seconds for each statement, on PostgreSQL). Unless "ok", the
answer's ``reasons`` say why. Where the EXTERNAL_URL's transport can tell how far its
consumers are behind (Kafka), ``consumer_lag`` is each consuming group's lag on each
partition of its channels; a broker that does not answer for it degrades the health.
The database's own error (which names its host and port) goes to the log, and to staff
users only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import StrIndex, Substr
from django.db.models.lookups import GreaterThan
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .. import conf, external, models, outbox
from ..core.policy import WAITING_FOR_HANDLER
from ..exceptions import ConfigurationError
from ..external import transports
from ..models import Delivery, WorkerBeat
from ..outbox import ordering, sql
from ..wording import first_line, plural

logger = logging.getLogger(__name__)

RATE_WINDOW = dt.timedelta(minutes=1)
SEEN_RECENTLY = dt.timedelta(minutes=1)  # a worker seen longer ago may be gone


def figures(using: str) -> dict[str, Any]:
    """Counts by status, what is due (waiting for a runner), how long the oldest due one
    has waited, how many wait for a paused handler, how many are scheduled for later and
    when the next falls due, and how many were done in the last minute: one query."""
    now = timezone.now()
    due = models.due(now)
    later = outbox.scheduled(now)
    by_status = {status.value: Count("id", filter=Q(status=status)) for status in Delivery.Status}
    waiting = Q(status=Delivery.Status.PENDING, last_error__startswith=WAITING_FOR_HANDLER)
    rows = Delivery.objects.using(using).aggregate(
        **by_status,
        due=Count("id", filter=due),
        waiting_for_a_handler=Count("id", filter=waiting),
        paused=Count("id", filter=Q(status=Delivery.Status.PENDING) & models.paused()),
        oldest_due=Min("next_attempt_at", filter=due),
        scheduled=Count("id", filter=later),
        next_scheduled=Min("next_attempt_at", filter=later),
        done_last_minute=Count(
            "id", filter=Q(status=Delivery.Status.DONE, finished_at__gte=now - RATE_WINDOW)
        ),
    )
    oldest = rows.pop("oldest_due")
    soonest = rows.pop("next_scheduled")
    return {
        "statuses": {status: rows.pop(status) for status in by_status},
        **rows,
        "next_scheduled_at": soonest.isoformat() if soonest else None,
        "lag_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
    }


def dead_by_handler(using: str) -> QuerySet[Any, Mapping[str, Any]]:
    """Dead deliveries by handler and the first line of their last error, the largest
    groups first: rows of ``handler``, ``error``, ``count`` and ``latest`` (finished_at)."""
    newline = StrIndex("last_error", Value("\n"))
    error = Case(
        When(GreaterThan(newline, 0), then=Substr("last_error", 1, newline - 1)),
        default=F("last_error"),
        output_field=TextField(),
    )
    return (
        Delivery.objects.using(using)
        .dead()
        .annotate(error=error)
        .values("handler", "error")
        .annotate(count=Count("id"), latest=Max("finished_at"))
        .order_by("-count", "handler", "error")
    )


def workers_seen(using: str, within: dt.timedelta = SEEN_RECENTLY) -> QuerySet[WorkerBeat]:
    """The workers (and relays, consumers) that said they were alive within ``within``
    and have not stopped since."""
    return WorkerBeat.objects.using(using).running().filter(seen_at__gte=timezone.now() - within)


def workers_and_last(
    using: str, within: dt.timedelta
) -> tuple[list[WorkerBeat], WorkerBeat | None]:
    """``workers_seen(using, within)``, and, if there are none, ``last_seen(using)``: in
    one query."""
    newest = ~Exists(WorkerBeat.objects.using(using).filter(seen_at__gt=OuterRef("seen_at")))
    since = timezone.now() - within
    beats = list(WorkerBeat.objects.using(using).filter(Q(seen_at__gte=since) | newest))
    seen = [b for b in beats if b.seen_at >= since and not b.stopped]
    return seen, None if seen else max(beats, key=lambda b: b.seen_at, default=None)


def last_seen(using: str) -> WorkerBeat | None:
    """The worker (or relay, consumer) seen last, stopped or not."""
    return WorkerBeat.objects.using(using).order_by("-seen_at").first()


def problems(outbox: dict[str, Any]) -> list[str]:
    """Why the outbox is degraded (none while it keeps up), from ``check``'s public figures."""
    max_lag, max_dead = conf.settings.HEALTH_MAX_LAG, conf.settings.HEALTH_MAX_DEAD
    found = []
    if outbox["lag_seconds"] > max_lag:
        found.append(
            f"the oldest due delivery has waited {outbox['lag_seconds']:.0f}s, "
            f"more than HEALTH_MAX_LAG ({max_lag}s)"
        )
    if outbox["dead"] > max_dead:
        found.append(f"{outbox['dead']} dead, more than HEALTH_MAX_DEAD ({max_dead})")
    if outbox["waiting_for_a_handler"]:
        found.append(waiting_for_a_handler(outbox["waiting_for_a_handler"]))
    return found


def waiting_for_a_handler(count: int) -> str:
    many = plural(count, "delivery waits", "deliveries wait")
    return f"{many} for a handler no running worker has"


def check(using: str) -> tuple[str, dict[str, Any]]:
    """("ok" | "degraded" | "down", the report). Down, the report's ``error`` is the
    database's own (host, port: not for anyone who asks), also logged."""
    try:
        with transaction.atomic(using=using):
            sql.bound_statements(using, conf.settings.HEALTH_TIMEOUT)
            outbox = figures(using)
    except DatabaseError as exc:
        logger.warning("Health: database %r does not answer: %s", using, first_line(exc))
        return "down", {
            "status": "down",
            "database": "down",
            "reasons": [DOWN],
            "error": first_line(exc),
        }
    statuses = outbox["statuses"]
    public = {
        "pending": statuses["pending"], "due": outbox["due"], "dead": statuses["dead"],
        "lag_seconds": outbox["lag_seconds"],
        "waiting_for_a_handler": outbox["waiting_for_a_handler"], "paused": outbox["paused"],
    }  # fmt: skip
    found = problems(public) + [str(key) for key in ordering.blocked(using)]
    report: dict[str, Any] = {"database": "ok", "outbox": public}
    if measures_lag():
        lag = consumer_lag()
        report["consumer_lag"] = lag
        if lag is None:
            found.append(NO_LAG)
    if not found:
        return "ok", {"status": "ok", **report}
    return "degraded", {"status": "degraded", "reasons": found, **report}


NO_LAG = "the broker does not say how far the consumers are behind"


def measures_lag() -> bool:
    """Whether the EXTERNAL_URL's transport tells its consumers' lag, and any app consumes."""
    try:
        return bool(external.subscriptions) and hasattr(transports.get(), "lag")
    except ConfigurationError:  # its check says what is wrong
        return False


def consumer_lag() -> list[dict[str, Any]] | None:
    """Each consuming group's lag on each partition of its channels (``transports.Lag``);
    None if the broker does not answer."""
    transport: Any = transports.get()
    try:
        return [lag._asdict() for lag in transport.lag(external.consumed())]
    except Exception as exc:  # noqa: BLE001 (whatever the broker says, health answers)
        logger.warning("Health: no consumer lag from the broker: %s", first_line(exc))
        return None


DOWN = "the database does not answer"


@never_cache
@require_GET
def health(request: HttpRequest, using: str = "default") -> HttpResponse:
    """200 while the database answers ("ok" or "degraded"), 503 when it does not. The
    database's error only to a signed-in staff user."""
    status, report = check(using)
    user = getattr(request, "user", None)
    if not (user is not None and user.is_staff):
        report.pop("error", None)
    return HttpResponse(
        json.dumps(report), content_type="application/json", status=503 if status == "down" else 200
    )
