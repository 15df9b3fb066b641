"""Every change of a delivery's state, each a named function, most one statement.

A delivery is *pending* until it is *done*, *dead* or *discarded*. A pending
delivery is due from ``next_attempt_at`` on, unless a runner holds a lease on
it (``lease_until``): a claimed batch, or a run waiting between calls. A
lease that runs out is the sign of a runner that died.

``runs`` counts the runs that ended: done, failed, dead or lost with their
runner. It grows by one in ``_END_RUN`` (and its SQL twin ``sql.done_*``),
and only a requeue sets it back to 0. A ``RetryLater`` and a hand-back at
shutdown end no run.

Transitions that name a ``lease`` act only while the row is still held under
it (None: not leased), so a runner that lost its lease changes nothing.
"""

from __future__ import annotations

import datetime as dt
import traceback
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import conf, sql
from ..envelope import Envelope
from ..models import Delivery, DeliveryQuerySet
from ..wording import describe
from .policy import Dead, Policy
from .reference import Reference

Status = Delivery.Status
_END_RUN: dict[str, Any] = {"runs": F("runs") + 1, "lease_until": None}


@dataclass(frozen=True)
class Claim:
    """A delivery leased to this runner until ``lease``; ``runs``: runs ended before;
    ``stored``: when its event was stored, if read with it."""

    ref: Reference
    id: int
    runs: int
    lease: dt.datetime
    stored: dt.datetime | None = field(default=None, compare=False)


def claim(using: str, limit: int, *, overdue: float = 0) -> list[Claim]:
    """Lease up to ``limit`` deliveries due ``overdue`` seconds ago (SKIP LOCKED)."""
    now = timezone.now()
    lease = now + dt.timedelta(seconds=conf.settings.CLAIM_TIMEOUT)
    due = now - dt.timedelta(seconds=overdue)
    return [
        Claim(Reference(using, event, handler,
                        Envelope(kind, event, corr, cause, payload, trace=trace)),
              pk, runs, lease, stored)
        for pk, handler, runs, event, kind, payload, corr, cause, trace, stored in sql.claim(
            using, limit, lease, due
        )
    ]  # fmt: skip


def start(using: str, claims: Sequence[Claim]) -> set[int]:
    """Lock, for the current transaction, the claimed deliveries still ours; their ids.

    The claims are one ``claim()``'s, so they share one lease.
    """
    return sql.lock(using, [c.id for c in claims], claims[0].lease) if claims else set()


def done(ref: Reference, lease: dt.datetime | None) -> bool:
    """Mark it done in the current transaction; False if not pending under ``lease``.

    Written before the handler runs, it locks the row: the handler's work and
    the mark commit together or roll back together.
    """
    return sql.done_one(ref.using, ref.event_id, ref.handler, lease, timezone.now())


def batch_done(using: str, ids: Sequence[int]) -> None:
    """Mark these deliveries, locked by ``start`` in this transaction, done."""
    sql.done_many(using, ids, timezone.now())


def finished(claims: Sequence[Claim]) -> set[int]:
    """Mark done, in one transaction, the claims whose handler has returned (async
    handlers: after their work, not with it); the ids of those still ours."""
    if not claims:
        return set()
    using = claims[0].ref.using
    leases: dict[dt.datetime, list[Claim]] = {}
    for claim in claims:
        leases.setdefault(claim.lease, []).append(claim)
    ours: set[int] = set()
    with transaction.atomic(using=using):
        for group in leases.values():
            ours |= start(using, group)
        batch_done(using, sorted(ours))
    return ours


def taken(refs: Sequence[Reference]) -> list[Claim]:
    """Lease these pending, unleased deliveries to this runner, for an async handler's
    run (which holds no row lock); those another runner holds are left out."""
    if not refs:
        return []
    using = refs[0].using
    lease = fresh_lease()
    by_key = {(ref.event_id, ref.handler): ref for ref in refs}
    rows = Delivery.objects.using(using).pending().filter(_any_of(refs))
    rows.filter(lease_until__isnull=True).update(lease_until=lease)
    return [
        Claim(by_key[event, handler], pk, runs, lease)
        for pk, event, handler, runs in rows.filter(lease_until=lease).values_list(
            "pk", "event_id", "handler", "runs"
        )
    ]


def failed_call(
    ref: Reference, lease: dt.datetime | None, error: BaseException
) -> dt.datetime | None:
    """Record a failed call; the run goes on, under a fresh lease, which is returned
    (None: not held under ``lease`` any more, so nothing is recorded)."""
    renewed = fresh_lease()
    held = _held(ref, lease).update(
        attempts=F("attempts") + 1,
        last_error=describe(error),
        traceback="".join(traceback.format_exception(error)),
        lease_until=renewed,
    )
    return renewed if held else None


def renewed(claim: Claim) -> dt.datetime | None:
    """Extend a lease still held (a long run); the new one, or None if it is lost."""
    lease = fresh_lease()
    rows = Delivery.objects.using(claim.ref.using).pending()
    held = rows.filter(pk=claim.id, lease_until=claim.lease).update(lease_until=lease)
    return lease if held else None


def rescheduled(ref: Reference, lease: dt.datetime | None, delay: float) -> int:
    """End a failed run: due again in ``delay`` seconds."""
    at = timezone.now() + dt.timedelta(seconds=delay)
    return _held(ref, lease).update(next_attempt_at=at, **_END_RUN)


def postponed(ref: Reference, lease: dt.datetime | None, delay: float, reason: str) -> int:
    """The handler asked to run again later: due in ``delay`` seconds, no run counted."""
    at = timezone.now() + dt.timedelta(seconds=delay)
    return _held(ref, lease).update(next_attempt_at=at, lease_until=None, last_error=reason)


def dead(ref: Reference, lease: dt.datetime | None, reason: str) -> int:
    """End its last run: dead, kept with ``reason`` until retried or discarded."""
    return _held(ref, lease).update(
        status=Status.DEAD, last_error=reason, finished_at=timezone.now(), **_END_RUN
    )


def released(using: str, claims: Sequence[Claim]) -> int:
    """Hand back claimed deliveries that did not run (a runner stopping): due now."""
    if not claims:
        return 0
    held = Q()
    for claim in claims:
        held |= Q(pk=claim.id, lease_until=claim.lease)
    return Delivery.objects.using(using).pending().filter(held).update(lease_until=None)


def leased(using: str, events: Collection[uuid.UUID], lease: dt.datetime) -> list[Reference]:
    """Lease the due, unleased deliveries of these events to tasks about to be sent.

    Those already leased (a relay got there first) are left to their holder.
    """
    deliveries = Delivery.objects.using(using).pending().filter(event_id__in=events)
    deliveries.due().update(lease_until=lease)
    ours = deliveries.filter(lease_until=lease).values_list("event_id", "handler")
    return [Reference(using, event, handler) for event, handler in ours]


def unleased(refs: Sequence[Reference], lease: dt.datetime) -> int:
    """Hand back deliveries leased to tasks that were never sent: due again now."""
    if not refs:
        return 0
    rows = Delivery.objects.using(refs[0].using).pending().filter(_any_of(refs), lease_until=lease)
    return rows.update(lease_until=None)


def requeued(deliveries: DeliveryQuerySet) -> int:
    """Dead or waiting deliveries: due now, with a fresh run budget."""
    return deliveries.retryable().update(
        status=Status.PENDING, runs=0, next_attempt_at=timezone.now(), lease_until=None,
        finished_at=None,
    )  # fmt: skip


def discarded(deliveries: DeliveryQuerySet) -> int:
    """Unfinished deliveries given up on: kept, never run."""
    return deliveries.retryable().update(
        status=Status.DISCARDED, finished_at=timezone.now(), lease_until=None
    )


def lease_expired(using: str, policy_of: Callable[[str], Policy]) -> list[tuple[Delivery, str]]:
    """End the runs whose runner vanished: due again, or dead past the limit.

    ``policy_of(handler name)`` gives each one's limit. Returns the
    deliveries that died, each with the reason.
    """
    died: list[tuple[Delivery, str]] = []
    with transaction.atomic(using=using):
        rows = list(
            Delivery.objects.using(using)
            .leased()
            .filter(lease_until__lte=timezone.now())
            .select_related("event")
            .select_for_update(skip_locked=True, of=("self",))
        )
        again = []
        for row in rows:
            verdict = policy_of(row.handler).after_lost_run(row.runs + 1)
            if isinstance(verdict, Dead):
                died.append((row, verdict.reason))
            else:
                again.append(row.pk)
        deliveries = Delivery.objects.using(using)
        deliveries.filter(pk__in=again).update(**_END_RUN)
        for row, reason in died:
            deliveries.filter(pk=row.pk).update(
                status=Status.DEAD, last_error=reason, finished_at=timezone.now(), **_END_RUN
            )
    return died


def runs(ref: Reference) -> int:
    """Runs ended so far (0 if the delivery is gone)."""
    found = _row(ref).values_list("runs", flat=True).first()
    return int(found or 0)


def held(ref: Reference, lease: dt.datetime) -> list[Claim]:
    """The claim on a delivery still pending under ``lease`` (a list of one), or none."""
    return [Claim(ref, pk, runs, lease) for pk, runs in _held(ref, lease).values_list("pk", "runs")]


def fresh_lease() -> dt.datetime:
    """A lease taken now: until CLAIM_TIMEOUT from now."""
    return timezone.now() + dt.timedelta(seconds=conf.settings.CLAIM_TIMEOUT)


def _any_of(refs: Sequence[Reference]) -> Q:
    held = Q()
    for ref in refs:
        held |= Q(event_id=ref.event_id, handler=ref.handler)
    return held


def _row(ref: Reference) -> DeliveryQuerySet:
    return Delivery.objects.using(ref.using).filter(event_id=ref.event_id, handler=ref.handler)


def _held(ref: Reference, lease: dt.datetime | None) -> DeliveryQuerySet:
    rows = _row(ref).pending()
    return rows.filter(lease_until=lease) if lease else rows.filter(lease_until__isnull=True)
