"""The admin's outbox dashboard: ``health.check``'s verdict and figures, the deliveries
done and their lag minute by minute over the last hour (as ``charts``), the dead letters
by handler and error, the workers seen lately."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import (
    Avg,
    CharField,
    Count,
    DateTimeField,
    F,
    IntegerField,
    Max,
    TextField,
    UUIDField,
    Value,
)
from django.db.models.functions import TruncMinute
from django.utils import timezone
from django.utils.http import urlencode

from ..core.messages import Event
from ..core.registry import registry
from ..delivery.run import policy_of
from ..models import Delivery, Pause, Slot, WorkerBeat
from ..outbox import ordering
from ..wording import first_line
from . import health
from .charts import bar_chart, hhmm

WINDOW = 60  # minutes the charts cover, the current one last
WORKERS_LISTED = dt.timedelta(minutes=10)  # older beats are not listed at all
DEAD_GROUPS = 20
VERDICTS = {"ok": "healthy", "degraded": "degraded", "down": "down"}  # health.check's words
MINUTE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Minute:
    """The deliveries done in one minute, and their lag: finished_at - created_at."""

    start: dt.datetime
    done: int = 0
    longest: float = 0.0  # seconds
    average: float = 0.0


def minutes(using: str, now: dt.datetime) -> list[Minute]:
    """The last WINDOW minutes up to ``now``'s, oldest first, empty ones too: one query."""
    last = now.replace(second=0, microsecond=0)
    first = last - (WINDOW - 1) * MINUTE
    lag = F("finished_at") - F("created_at")
    rows = (
        Delivery.objects.using(using)
        .filter(status=Delivery.Status.DONE, finished_at__gte=first, finished_at__lt=last + MINUTE)
        # In UTC: the same minutes as in any zone (their offsets are whole minutes), and
        # MySQL and MariaDB need no time zone tables to truncate them.
        .annotate(minute=TruncMinute("finished_at", tzinfo=dt.UTC))
        .values("minute")
        .annotate(done=Count("id"), longest=Max(lag), average=Avg(lag))
        .order_by("minute")
    )
    found = {
        row["minute"]: Minute(
            row["minute"], row["done"], _seconds(row["longest"]), _seconds(row["average"])
        )
        for row in rows
    }
    starts = (first + n * MINUTE for n in range(WINDOW))
    return [found.get(start, Minute(start)) for start in starts]


def report(using: str) -> dict[str, Any]:
    """What the dashboard shows: the verdict and why, and, while the database answers,
    the headline figures, the two charts, the dead letters and the workers."""
    status, checked = health.check(using)
    verdict = {"status": status, "verdict": VERDICTS[status]}
    if status == "down":
        return {**verdict, "reasons": [f"{health.DOWN}: {checked['error']}"]}
    now = timezone.now()
    series = minutes(using, now)
    beats, last = health.workers_and_last(using, WORKERS_LISTED)
    workers = [_worker(beat, now) for beat in beats]
    return {
        **verdict,
        "reasons": health.problems(checked["outbox"]),
        "outbox": checked["outbox"],
        "lag": span(checked["outbox"]["lag_seconds"]),
        "alive": sum(not worker["stale"] for worker in workers),
        "done_chart": bar_chart(
            "Deliveries done per minute",
            "done",
            [
                (m.start, m.done, f"{hhmm(m.start)}: {m.done} done" if m.done else None)
                for m in series
            ],
            lambda value: f"{value:g}",
            least=2,
        ),
        "lag_chart": bar_chart(
            "Lag per minute: the longest",
            "lag",
            [(m.start, m.longest, _lag_tooltip(m) if m.done else None) for m in series],
            span,
        ),
        "dead": [_dead_group(row) for row in health.dead_by_handler(using)[:DEAD_GROUPS]],
        "blocked": ordering.blocked(using),
        "handlers": handlers(using),
        "workers": workers,
        "last_seen": _worker(last, now) if last else None,
        "listed_minutes": int(WORKERS_LISTED / MINUTE),
    }


def handlers(using: str) -> list[dict[str, Any]]:
    """Each handler delivered after commit, by name: how many of its deliveries are
    pending, its pause (who, when, why), if paused, and, if it has a max_concurrency
    (``cap``, per ``key``), how many of its deliveries run now (``running``: the slots
    taken). One query."""
    delivered = [
        h for h in registry.handlers() if issubclass(h.message_type, Event) and not h.in_transaction
    ]
    none = {
        "paused_by": Value(None, CharField()),
        "paused_at": Value(None, DateTimeField()),
        "reason": Value(None, TextField()),
        "until": Value(None, DateTimeField()),
        "probe": Value(None, UUIDField()),
    }
    pending = (
        Delivery.objects.using(using).pending().order_by().values("handler")
        .annotate(kind=Value("pending"), count=Count("id"), **none)
    )  # fmt: skip
    pauses = (
        Pause.objects.using(using)
        .order_by()
        .values("handler")
        .annotate(
            kind=Value("pause"),
            count=Value(None, IntegerField()),
            **{field: F(field) for field in none},
        )
    )
    running = (
        Slot.objects.using(using).filter(lease_until__gt=timezone.now()).order_by()
        .values("handler").annotate(kind=Value("running"), count=Count("id"), **none)
    )  # fmt: skip
    found: dict[str, dict[str, Any]] = {}

    def row_of(name: str) -> dict[str, Any]:
        return found.setdefault(name, {"pending": 0, "pause": None, "running": 0, **_cap(name)})

    for known in delivered:
        row_of(known.name)
    # Unordered: from Django 6.1 a union takes the first model's Meta.ordering otherwise.
    for row in pending.union(pauses, running, all=True).order_by():
        handler = row_of(row["handler"])
        if row["kind"] == "pause":
            handler["pause"] = Pause(**{k: v for k, v in row.items() if k not in ("kind", "count")})
        else:
            handler[row["kind"]] = row["count"]
    return [{"name": name, **found[name]} for name in sorted(found)]


def _cap(name: str) -> dict[str, Any]:
    """A handler's max_concurrency (``cap``, None: none) and ``key`` (its
    concurrency_key), as registered in this process."""
    policy = policy_of(name)
    return {"cap": policy.max_concurrency, "key": policy.concurrency_key}


def _dead_group(row: Mapping[str, Any]) -> dict[str, Any]:
    """A group of dead letters, with the delivery list's query string for it (its
    ``error`` is ``admin.ErrorFilter``'s)."""
    dead = Delivery.Status.DEAD.value
    query = {"status__exact": dead, "handler__exact": row["handler"], "error": row["error"]}
    return {
        **row,
        "short_error": first_line(row["error"], 160),
        "query": urlencode(query),
    }


def _worker(beat: WorkerBeat, now: dt.datetime) -> dict[str, Any]:
    """A beat's row, with how long ago it was seen."""
    ago = (now - beat.seen_at).total_seconds()
    return {
        "beat": beat,
        "role": beat.role,
        "ago": span(max(0.0, ago)),
        "stale": now - beat.seen_at > health.SEEN_RECENTLY,
    }


def _seconds(lag: dt.timedelta | None) -> float:
    return lag.total_seconds() if lag else 0.0


def _lag_tooltip(m: Minute) -> str:
    return (
        f"{hhmm(m.start)}: longest {m.longest:.3f} s, average {m.average:.3f} s, of {m.done} done"
    )


def span(seconds: float) -> str:
    """``0``, ``850 ms``, ``4.2 s``, ``38 s``, ``1.5 min``, ``2 h``: a lag, to about two figures."""
    for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            return f"{_figures(seconds / size)} {unit}"
    return f"{_figures(seconds * 1000)} ms" if seconds > 0 else "0"


def _figures(value: float) -> str:
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"
