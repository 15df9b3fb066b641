"""Concurrency slots: at most ``max_concurrency`` deliveries of a handler run at once.

A handler registered with ``@handler(max_concurrency=N)`` has N slots, shared by
every process on the database: N per value of its ``concurrency_key``, if it
names a field of the message (the value read as the delivery is stored, and
kept in ``Delivery.concurrency_key``). A delivery takes a slot just before its
call, in a statement of its own, so every other process sees it taken, and
frees it in the transaction that ends its run (done, failed, dead): the next
delivery starts only once the work of the last has committed. A slot is held
under a lease, as a claimed delivery is (CLAIM_TIMEOUT, renewed while an async
handler runs): one whose runner died is free again once its lease runs out.

A delivery that finds every slot taken is handed back at once, due as before,
no run counted, and the slots are marked *wanted*. A worker that frees a slot
claims the next due deliveries itself; a runner that claims nothing after (the
inline executor, a Celery task) wakes the workers and the relay as it frees a
wanted slot (PostgreSQL's NOTIFY, sent as the freeing commits): waking every
idle worker at each freeing would have them race for the one slot.

Claims leave out the deliveries whose slots are all taken, and take no more of
one key than there are slots free (``sql.claim``'s ``capped``), but only in
processes where some handler has a max_concurrency: a project with none pays
nothing for them.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from django.db.models import Count
from django.utils import timezone

from .. import conf
from ..models import Slot
from . import sql
from .reference import Reference

TRIES = 3  # takes of a slot that others beat to a free number, before giving up


class Taken(NamedTuple):
    """A slot a delivery holds: the delivery, the slot's number, and whether freeing it
    wakes the workers if another delivery wanted it (its runner claims nothing after)."""

    ref: Reference
    number: int
    wakes: bool


def take(ref: Reference, lease: dt.datetime | None, most: int, *, wakes: bool) -> Taken | None:
    """Take one of the ``most`` slots of ``ref``'s handler (for its delivery's concurrency
    key), for its delivery, pending under ``lease`` (None: unleased), until CLAIM_TIMEOUT
    from now. None: every slot is taken (each is marked wanted), or the delivery is not
    pending under ``lease``. ``wakes``: see ``Taken``."""
    for _ in range(TRIES):
        now = timezone.now()
        until = now + dt.timedelta(seconds=conf.settings.CLAIM_TIMEOUT)
        number = sql.take_slot(ref.using, ref.event_id, ref.handler, lease, most, until, now)
        if number is not None:
            return Taken(ref, number, wakes)
        if sql.want_slots(ref.using, ref.event_id, ref.handler, lease, timezone.now()) >= most:
            return None
        # Fewer are taken: another taker had the number it tried, or it is not pending.
    return None


def free(slot: Taken) -> None:
    """Free ``slot`` in the current transaction (the one that ends its delivery's run);
    if a delivery wanted it and it ``wakes``, wake the workers as it commits."""
    ref = slot.ref
    if sql.free_slot(ref.using, ref.event_id, ref.handler, slot.number) and slot.wakes:
        sql.notify(ref.using)


def renew(slot: Taken, until: dt.datetime) -> bool:
    """Hold ``slot`` until ``until`` (its delivery's lease renewed); False if its delivery
    no longer holds it."""
    ref = slot.ref
    return sql.renew_slot(ref.using, ref.event_id, ref.handler, slot.number, until)


def clear_expired(using: str) -> int:
    """Delete the slots whose lease ran out (their runners died): free already, their rows
    are kept no longer. How many."""
    deleted, _ = Slot.objects.using(using).filter(lease_until__lte=timezone.now()).delete()
    return deleted


def taken(using: str) -> dict[str, int]:
    """The slots taken now, by handler (every key's together)."""
    rows = (
        Slot.objects.using(using)
        .filter(lease_until__gt=timezone.now())
        .order_by()
        .values_list("handler")
        .annotate(n=Count("id"))
    )
    return dict(rows)
