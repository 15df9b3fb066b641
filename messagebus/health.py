"""The outbox's health, for a load balancer or a monitor: ``GET /health/``,
``messagebus status``.

"ok" while the database answers and the outbox keeps up; "degraded" when the
oldest due delivery has waited longer than HEALTH_MAX_LAG seconds or more than
HEALTH_MAX_DEAD deliveries are dead; "down" when the database does not answer
(within HEALTH_TIMEOUT seconds for each statement, on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Count, Min, Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import conf, models, sql
from .models import Delivery
from .wording import first_line

RATE_WINDOW = dt.timedelta(minutes=1)


def figures(using: str) -> dict[str, Any]:
    """Counts by status, what is due (waiting for a runner), how long the oldest due one
    has waited, and how many were done in the last minute: one query."""
    now = timezone.now()
    due = models.due(now)
    by_status = {status.value: Count("id", filter=Q(status=status)) for status in Delivery.Status}
    rows = Delivery.objects.using(using).aggregate(
        **by_status,
        due=Count("id", filter=due),
        oldest_due=Min("next_attempt_at", filter=due),
        done_last_minute=Count(
            "id", filter=Q(status=Delivery.Status.DONE, finished_at__gte=now - RATE_WINDOW)
        ),
    )
    oldest = rows.pop("oldest_due")
    return {
        "statuses": {status: rows.pop(status) for status in by_status},
        **rows,
        "lag_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
    }


def check(using: str) -> tuple[str, dict[str, Any]]:
    """("ok" | "degraded" | "down", the report)."""
    try:
        with transaction.atomic(using=using):
            sql.bound_statements(using, conf.settings.HEALTH_TIMEOUT)
            outbox = figures(using)
    except DatabaseError as exc:
        return "down", {"status": "down", "database": first_line(exc)}
    settings = conf.settings
    statuses = outbox["statuses"]
    late = outbox["lag_seconds"] > settings.HEALTH_MAX_LAG
    status = "degraded" if late or statuses["dead"] > settings.HEALTH_MAX_DEAD else "ok"
    public = {
        "pending": statuses["pending"], "due": outbox["due"], "dead": statuses["dead"],
        "lag_seconds": outbox["lag_seconds"],
    }  # fmt: skip
    return status, {"status": status, "database": "ok", "outbox": public}


@never_cache
@require_GET
def health(request: HttpRequest, using: str = "default") -> HttpResponse:
    """200 while the database answers ("ok" or "degraded"), 503 when it does not."""
    status, report = check(using)
    return HttpResponse(
        json.dumps(report), content_type="application/json", status=503 if status == "down" else 200
    )
