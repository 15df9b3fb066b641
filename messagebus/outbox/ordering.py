"""Per-key ordering: an ordered handler's deliveries of one key run one at a time, in
the order their events committed.

A handler is ordered when it (or its message class) names an ``ordering_key``: a
field of the message, whose value, as text, is the delivery's key (kept in
``Delivery.concurrency_key``). As a delivery is stored, it takes the next number of
its (handler, key) from a ``KeySequence`` row, with an UPDATE in the storing
transaction: the row stays locked until that transaction ends, so a second
transaction storing an event of the same key waits for the first to commit (or
roll back, which gives its number back) before it takes the next. A key's numbers
are therefore in the order its events committed, without gaps, and whatever is
visible of a key is always its first numbers.

A delivery runs only once none of its key's deliveries with a smaller number is
unfinished: pending, or dead (unless its handler says ``dead_head="proceed"``).
Claims take no other (``sql.claim``); a runner that was handed one anyway (a
delivery just stored, a Celery task) looks before it marks it done, in the same
transaction, and hands it back if one is (``behind``). Retrying a dead delivery
puts it back at the head of its key; one whose key went on without it, at its
back (``to_the_back``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet

from ..core.registry import registry
from ..models import Delivery, KeySequence
from .reference import Reference

Status = Delivery.Status


def sequences(using: str, keys: Sequence[tuple[str, str]]) -> list[int]:
    """The next number of each (handler, key), taken in the current transaction, whose
    rows stay locked until it ends (taken in sorted order, so that two transactions
    storing the same keys wait for each other rather than deadlock)."""
    rows = KeySequence.objects.using(using)
    taken: dict[tuple[str, str], int] = {}
    for handler, key in sorted(set(keys)):
        row = rows.filter(handler=handler, key=key)
        if not row.update(last=F("last") + 1):
            try:
                with transaction.atomic(using=using):
                    rows.create(handler=handler, key=key, last=1)
            except IntegrityError:  # another transaction made it first: wait for it
                row.update(last=F("last") + 1)
        taken[handler, key] = row.values_list("last", flat=True).get()
    return [taken[pair] for pair in keys]


def to_the_back(deliveries: QuerySet[Delivery]) -> None:
    """Give the dead deliveries among ``deliveries`` whose handlers proceed past a dead one
    the next numbers of their keys, in the current transaction: retried, each runs after
    the ones that went on without it, and never beside one of them still running."""
    dead = deliveries.filter(status=Status.DEAD, sequence__isnull=False, handler__in=proceeding())
    for pk, handler, key in dead.order_by("sequence", "pk").values_list(
        "pk", "handler", "concurrency_key"
    ):
        [number] = sequences(deliveries.db, [(handler, key)])
        Delivery.objects.using(deliveries.db).filter(pk=pk).update(sequence=number)


def elders(proceeding: Collection[str] = ()) -> Q:
    """A delivery with an unfinished delivery before it, of its handler and key: pending,
    or dead unless its handler is one of ``proceeding``."""
    unfinished = Q(status=Status.PENDING) | Q(status=Status.DEAD) & ~Q(handler__in=proceeding)
    before = Delivery.objects.filter(
        unfinished,
        handler=OuterRef("handler"),
        concurrency_key=OuterRef("concurrency_key"),
        sequence__lt=OuterRef("sequence"),
    )
    return Q(sequence__isnull=False) & Q(Exists(before))


def proceeding() -> list[str]:
    """The ordered handlers whose keys go on past a dead delivery."""
    return [name for name, waits in registry.ordered() if not waits]


def behind(ref: Reference) -> bool:
    """Whether an unfinished delivery of its handler and key comes before it."""
    rows = Delivery.objects.using(ref.using).filter(event_id=ref.event_id, handler=ref.handler)
    return rows.filter(elders(proceeding())).exists()


class Blocked(NamedTuple):
    """A key whose first unfinished delivery is dead, and waits: ``delivery`` (its id), and
    how many of its key wait behind it."""

    handler: str
    key: str
    delivery: int
    waiting: int

    def __str__(self) -> str:
        return f"key {self.key} of {self.handler} blocked by delivery {self.delivery}"


def blocked(using: str) -> list[Blocked]:
    """The keys held up by a dead delivery (of handlers that wait behind one), oldest
    first; none looked up while no handler here is ordered."""
    waiting = [name for name, waits in registry.ordered() if waits]
    if not waiting:
        return []
    rows = Delivery.objects.using(using)
    behind_it = rows.filter(
        handler=OuterRef("handler"),
        concurrency_key=OuterRef("concurrency_key"),
        sequence__gt=OuterRef("sequence"),
        status=Status.PENDING,
    )
    heads = (
        rows.dead()
        .filter(handler__in=waiting, sequence__isnull=False)
        .exclude(elders())
        .filter(Exists(behind_it))
        .order_by("finished_at", "id")
        .values_list("handler", "concurrency_key", "pk", "sequence")
    )
    return [
        Blocked(handler, key, pk, _pending_after(using, handler, key, number or 0))
        for handler, key, pk, number in heads
    ]


def _pending_after(using: str, handler: str, key: str, number: int) -> int:
    rows = Delivery.objects.using(using).pending()
    return rows.filter(handler=handler, concurrency_key=key, sequence__gt=number).count()
