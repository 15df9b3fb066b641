"""Every change of a delivery's state, each a named function, most one statement.

A delivery is *pending* until it is *done*, *dead* or *discarded*. A pending
delivery is due from ``next_attempt_at`` on, unless a runner holds a lease on
it (``lease_until``): a claimed batch, or a run waiting between calls. A
lease that runs out is the sign of a runner that died.

``attempts`` counts every call of the handler; ``calls`` those of the run
under way, and ``runs`` the runs that ended: done, failed, dead or lost with
their runner. A run ends in ``_END_RUN`` (and its SQL twin ``sql.done_*``),
and only a requeue sets ``runs`` back to 0. A ``RetryLater``, a missing
handler and a hand-back at shutdown end no run.

A message scheduled for later is stored with its deliveries due at its time;
``cancelled`` discards those not started yet.

Transitions that name a ``lease`` act only while the row is still held under
it (None: not leased), so a runner that lost its lease changes nothing.
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.db import connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import conf
from ..core.envelope import Envelope
from ..core.policy import Dead, Policy, Postpone, Verdict
from ..core.registry import registry
from ..models import Delivery, DeliveryQuerySet, Pause, paused
from ..wording import describe
from . import ordering, slots, sql
from .reference import Reference

Status = Delivery.Status
CANCELLED = "Cancelled before it ran"  # a cancelled delivery's reason, kept as its last error
KEYS_SHARE = 8  # of a claim's limit, how many ordered keys' first deliveries it may take
_END_RUN: dict[str, Any] = {"runs": F("runs") + 1, "calls": 0, "lease_until": None}


def _buried(reason: str) -> dict[str, Any]:
    """What marks a delivery dead: its last run ended, kept with ``reason``."""
    return {"status": Status.DEAD, "last_error": reason, "finished_at": timezone.now(), **_END_RUN}


@dataclass(frozen=True)
class Claim:
    """A delivery leased to this runner until ``lease`` (None: just stored, unleased);
    ``runs``: runs ended before; ``calls``: calls of the run under way; ``stored``: when
    its event was stored, and ``key``: its concurrency key, if read with it."""

    ref: Reference
    id: int
    runs: int
    lease: dt.datetime | None
    stored: dt.datetime | None = field(default=None, compare=False)
    calls: int = 0
    key: str | None = field(default=None, compare=False)

    @classmethod
    def fresh(cls, ref: Reference) -> Claim:
        """A delivery just stored (or just made due again): unleased, nothing run yet."""
        return cls(ref, 0, 0, None)


def claim(
    using: str,
    limit: int,
    *,
    overdue: float = 0,
    queues: Sequence[str] = (),
    in_flight: bool = False,
    follow: bool = False,
) -> list[Claim]:
    """Lease up to ``limit`` deliveries due ``overdue`` seconds ago (SKIP LOCKED), of
    ``queues`` only if given, highest priority first; none of a paused handler, and of a
    handler with a max_concurrency, no more of one key than it has slots free (or,
    ``in_flight``, as the relay counts, than it has deliveries not leased); of an ordered
    handler, none behind an unfinished delivery of its key (``ordering``), and the first
    ones of no more than ``limit // KEYS_SHARE`` keys: other runners find the rest.

    ``follow`` (a runner that runs its claims one after another, in their order): after
    the first ones of its keys, a sync ordered handler's deliveries that follow them, in
    their keys' order, up to ``limit`` in all."""
    now = timezone.now()
    lease = now + dt.timedelta(seconds=conf.settings.CLAIM_TIMEOUT)
    due = now - dt.timedelta(seconds=overdue)
    ordered = registry.ordered()
    claims = _claims(using, lease, sql.claim(
        using, limit, lease, due, queues,
        paused=any_paused(using), capped=registry.capped(), now=now, in_flight=in_flight,
        ordered=ordered, keys=max(1, limit // KEYS_SHARE),
    ))  # fmt: skip
    firsts = [c.id for c in claims if c.ref.handler in _followed(ordered)] if follow else []
    if firsts and len(claims) < limit:
        proceeding = [name for name, waits in ordered if not waits]
        rows = sql.follow(using, firsts, limit - len(claims), lease, due, queues,
                          proceeding=proceeding)  # fmt: skip
        claims += sorted(_claims(using, lease, rows), key=lambda c: c.id)  # in their keys' order
    return claims


def _followed(ordered: Sequence[tuple[str, bool]]) -> set[str]:
    """The ordered handlers whose claims may take followers: the sync ones (a claim's
    async deliveries may run at once, each marked done as it returns)."""
    handlers = (registry.named(name) for name, _ in ordered)
    return {h.name for h in handlers if h is not None and not h.is_async}


def _claims(using: str, lease: dt.datetime, rows: Sequence[sql.Claimed]) -> list[Claim]:
    return [
        Claim(Reference(using, event, handler,
                        Envelope(kind, event, corr, cause, payload, trace=trace)),
              pk, runs, lease, stored, calls, key)
        for pk, handler, runs, calls, event, kind, payload, corr, cause, trace, stored, key
        in rows
    ]  # fmt: skip


def start(using: str, claims: Sequence[Claim]) -> set[int]:
    """Lock, for the current transaction, the claimed deliveries still ours; their ids.

    The claims are one ``claim()``'s, so they share one lease.
    """
    if not claims:
        return set()
    lease = claims[0].lease
    assert lease is not None, "only claimed deliveries are locked by id"
    return sql.lock(using, [c.id for c in claims], lease)


def done(ref: Reference, lease: dt.datetime | None) -> bool:
    """Mark it done in the current transaction; False if not pending under ``lease``.

    Written as the handler's call begins, it locks the row: the handler's work
    and the mark commit together or roll back together.
    """
    return sql.done_one(
        ref.using, ref.event_id, ref.handler, lease, timezone.now(), paused=any_paused(ref.using)
    )


PAUSE_RECHECK = 1.0  # seconds a process trusts its last look at whether any handler is paused
_any_paused: dict[str, tuple[float, bool]] = {}


def any_paused(using: str) -> bool:
    """Whether some handler may be paused: looked up at most every PAUSE_RECHECK seconds
    (known at once in the process that pauses), so the done-mark checks the pauses only
    while there are some. A pause made elsewhere holds here within PAUSE_RECHECK."""
    now = time.monotonic()
    seen = _any_paused.get(using)
    if seen is None or now - seen[0] >= PAUSE_RECHECK:
        seen = _any_paused[using] = (now, Pause.objects.using(using).exists())
    return seen[1]


def _paused_here(using: str) -> None:
    _any_paused[using] = (time.monotonic(), True)


def batch_done(
    using: str,
    ids: Sequence[int],
    begun: dt.datetime | None = None,
    results: Mapping[int, Any] | None = None,
) -> None:
    """Mark these deliveries, locked by ``start`` in this transaction, done, as of
    ``begun`` (when the batch's calls began; default now), with the ``results`` (id ->
    what its call returned, as JSON) of those that keep one."""
    sql.done_many(using, ids, begun or timezone.now(), results)


def finished(claims: Sequence[Claim], freeing: Sequence[slots.Taken] = ()) -> set[int]:
    """Mark done, in one transaction, the claims whose handler has returned (async
    handlers: after their work, not with it), and free the concurrency slots they held
    (``freeing``); the ids of those still ours."""
    if not claims:
        return set()
    using = claims[0].ref.using
    leases: dict[dt.datetime | None, list[Claim]] = {}
    for claim in claims:
        leases.setdefault(claim.lease, []).append(claim)
    ours: set[int] = set()
    with transaction.atomic(using=using):
        for group in leases.values():
            ours |= start(using, group)
        batch_done(using, sorted(ours))
        for slot in freeing:
            slots.free(slot)
    return ours


def taken(refs: Sequence[Reference]) -> list[Claim]:
    """Lease these pending, unleased deliveries to this runner, for an async handler's
    run (which holds no row lock); those another runner holds, and those behind an
    unfinished delivery of their key (ordered), are left out."""
    if not refs:
        return []
    using = refs[0].using
    lease = fresh_lease()
    by_key = {(ref.event_id, ref.handler): ref for ref in refs}
    rows = Delivery.objects.using(using).pending().filter(_any_of(refs))
    free = rows.filter(lease_until__isnull=True).exclude(paused())
    if registry.ordered():
        free = free.exclude(ordering.elders(ordering.proceeding()))
    free.update(lease_until=lease)
    return [
        Claim(by_key[event, handler], pk, runs, lease, calls=calls)
        for pk, event, handler, runs, calls in rows.filter(lease_until=lease).values_list(
            "pk", "event_id", "handler", "runs", "calls"
        )
    ]


def failed(
    ref: Reference,
    lease: dt.datetime | None,
    error: BaseException,
    verdict: Verdict,
    slot: slots.Taken | None = None,
) -> bool:
    """Record a failed call and what the policy made of it: due again (the run goes on,
    or it ended), postponed (no run counted), or dead; and free the concurrency ``slot``
    it held, if any, in the same transaction. False: not held under ``lease`` any more,
    so nothing is recorded (its holder records its own)."""
    now = timezone.now()
    at = now + dt.timedelta(seconds=0 if isinstance(verdict, Dead) else verdict.delay)
    changes: dict[str, Any] = {
        "attempts": F("attempts") + 1,
        "last_error": describe(error),
        "traceback": "".join(traceback.format_exception(error)),
        "lease_until": None,
    }
    if isinstance(verdict, Dead):
        changes.update(_buried(verdict.reason))
    elif isinstance(verdict, Postpone):
        changes.update(next_attempt_at=at, last_error=verdict.reason)
    elif verdict.ends_run:
        changes.update(_END_RUN, next_attempt_at=at)
    else:
        changes.update(calls=F("calls") + 1, next_attempt_at=at)
    if slot is None:
        return bool(_held(ref, lease).update(**changes))
    with transaction.atomic(using=ref.using):
        slots.free(slot)
        return bool(_held(ref, lease).update(**changes))


def waiting(ref: Reference, lease: dt.datetime | None, verdict: Postpone) -> int:
    """Its handler is missing here: due again in a while, for a process that has it."""
    at = timezone.now() + dt.timedelta(seconds=verdict.delay)
    return _held(ref, lease).update(next_attempt_at=at, lease_until=None, last_error=verdict.reason)


def renewed(claim: Claim) -> dt.datetime | None:
    """Extend a lease still held (a long run); the new one, or None if it is lost."""
    lease = fresh_lease()
    rows = Delivery.objects.using(claim.ref.using).pending()
    held = rows.filter(pk=claim.id, lease_until=claim.lease).update(lease_until=lease)
    return lease if held else None


def dead(ref: Reference, lease: dt.datetime | None, reason: str) -> int:
    """End its last run: dead, kept with ``reason`` until retried or discarded."""
    return _held(ref, lease).update(**_buried(reason))


def released(using: str, claims: Sequence[Claim]) -> int:
    """Hand back claimed deliveries that did not run (a runner stopping): due now."""
    if not claims:
        return 0
    held = Q()
    for claim in claims:
        held |= Q(pk=claim.id, lease_until=claim.lease)
    return Delivery.objects.using(using).pending().filter(held).update(lease_until=None)


def let_go(ref: Reference, lease: dt.datetime) -> int:
    """Give up the lease on a delivery that did not start (its handler is paused, or its
    slots are all taken): due as before, no run counted."""
    return _held(ref, lease).update(lease_until=None)


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
    """Dead or waiting deliveries: due now, with a fresh run budget; a dead one whose
    handler's keys went on without it, last of its key."""
    with transaction.atomic(using=deliveries.db):
        ordering.to_the_back(deliveries)
        return deliveries.retryable().update(
            status=Status.PENDING, runs=0, calls=0, next_attempt_at=timezone.now(),
            lease_until=None, finished_at=None,
        )  # fmt: skip


def handler_paused(using: str, handler: str, by: str = "", reason: str = "") -> bool:
    """Start none of ``handler``'s deliveries from now on (those under way finish); they
    stay pending until it is resumed by hand, even if a circuit breaker had paused it.
    False if it was paused by hand already (kept as it was)."""
    _paused_here(using)
    pauses = Pause.objects.using(using).filter(handler=handler)
    changes = {"paused_by": by, "reason": reason, "paused_at": timezone.now()}
    if pauses.filter(until__isnull=False).update(**changes, until=None, probe=None):
        return True  # a breaker's, now held until resumed by hand
    _, created = pauses.get_or_create(handler=handler, defaults=changes)
    return created


def handler_resumed(using: str, handler: str) -> list[Reference] | None:
    """Start ``handler``'s deliveries again: the ones due now, to hand to the executor;
    None if it was not paused."""
    deleted, _ = Pause.objects.using(using).filter(handler=handler).delete()
    return due_of(using, handler) if deleted else None


def due_of(using: str, handler: str) -> list[Reference]:
    """The deliveries to ``handler`` due now."""
    rows = Delivery.objects.using(using).due().filter(handler=handler)
    return [Reference(using, event, handler) for event in rows.values_list("event_id", flat=True)]


BREAKER = "circuit breaker"  # who a breaker's pause says paused the handler


def breaker_opened(using: str, handler: str, until: dt.datetime, reason: str) -> bool:
    """Pause ``handler`` until ``until``, by its breaker; False if it was paused already."""
    _paused_here(using)
    _, created = Pause.objects.using(using).get_or_create(
        handler=handler, defaults={"paused_by": BREAKER, "reason": reason, "until": until}
    )
    return created


def breakers_due(using: str, now: dt.datetime) -> list[Pause]:
    """The breakers' pauses whose cool-down is over: time to probe, or to settle the probe
    taken a cool-down ago."""
    return list(Pause.objects.using(using).filter(until__lte=now))


def probe_done(using: str, pause: Pause) -> bool:
    """Whether the delivery that probes for ``pause`` is done."""
    rows = Delivery.objects.using(using).filter(handler=pause.handler, event_id=pause.probe)
    return rows.filter(status=Status.DONE).exists()


class Probe(NamedTuple):
    """A breaker's probe taken: the event whose delivery probes; None: the handler had
    none due to probe with, and its pause is lifted."""

    event: uuid.UUID | None


def probe_taken(using: str, pause: Pause, until: dt.datetime) -> Probe | None:
    """Let one delivery of the paused handler that is due run (the one due first), until
    ``until``; None if another process got there first."""
    candidates = (
        Delivery.objects.using(using)
        .pending()
        .filter(
            handler=pause.handler, lease_until__isnull=True, next_attempt_at__lte=timezone.now()
        )
    )
    event = candidates.order_by("next_attempt_at", "id").values_list("event_id", flat=True).first()
    mine = Pause.objects.using(using).filter(handler=pause.handler, until=pause.until, probe=None)
    if event is None:
        return Probe(None) if mine.delete()[0] else None
    if not mine.update(probe=event, until=until):
        return None
    return Probe(event)


def probe_ended(using: str, handler: str, event: uuid.UUID, until: dt.datetime | None) -> bool:
    """The probe's delivery ran: passed (``until`` None), the pause is lifted; failed, the
    handler stays paused until ``until``. False if ``event`` was not the probe."""
    probing = Pause.objects.using(using).filter(handler=handler, probe=event)
    if until is None:
        return probing.delete()[0] > 0
    return probing.update(probe=None, until=until) > 0


def discarded(deliveries: DeliveryQuerySet) -> int:
    """Unfinished deliveries given up on: kept, never run."""
    return deliveries.retryable().update(
        status=Status.DISCARDED, finished_at=timezone.now(), lease_until=None
    )


def cancelled(using: str, message: uuid.UUID) -> int:
    """A message's deliveries that have not started (never called, not held by a runner):
    discarded, never to run. How many."""
    rows = (
        Delivery.objects.using(using)
        .pending()
        .filter(event_id=message, lease_until__isnull=True, attempts=0)
    )
    return rows.update(status=Status.DISCARDED, finished_at=timezone.now(), last_error=CANCELLED)


def lease_expired(using: str, policy_of: Callable[[str], Policy]) -> list[tuple[Delivery, str]]:
    """End the runs whose runner vanished: due again, or dead past the limit (and, where
    some handler has a max_concurrency, delete the slots whose lease ran out).

    ``policy_of(handler name)`` gives each one's limit. Returns the
    deliveries that died, each with the reason.
    """
    if registry.capped():
        slots.clear_expired(using)
    died: list[tuple[Delivery, str]] = []
    # Only the deliveries' rows, where the database can say so (MariaDB locks the events too).
    of = ("self",) if connections[using].features.has_select_for_update_of else ()
    with transaction.atomic(using=using):
        rows = list(
            Delivery.objects.using(using)
            .leased()
            .filter(lease_until__lte=timezone.now())
            .select_related("event")
            .select_for_update(skip_locked=True, of=of)
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
            deliveries.filter(pk=row.pk).update(**_buried(reason))
    return died


class Counts(NamedTuple):
    """Runs ended so far, calls of the run under way, and when it was stored."""

    runs: int = 0
    calls: int = 0
    stored: dt.datetime | None = None


def counts(ref: Reference) -> Counts:
    """A delivery's counts, read (all zero if the delivery is gone)."""
    found = _row(ref).values_list("runs", "calls", "created_at").first()
    return Counts(*found) if found else Counts()


def held(ref: Reference, lease: dt.datetime) -> list[Claim]:
    """The claim on a delivery still pending under ``lease`` (a list of one), or none."""
    rows = _held(ref, lease).values_list("pk", "runs", "calls", "created_at")
    return [Claim(ref, pk, runs, lease, stored, calls) for pk, runs, calls, stored in rows]


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
