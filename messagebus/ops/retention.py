"""What ``messagebus prune`` deletes besides the outbox's deliveries and events: the
records the bus keeps of what has ended, once older than the cutoff.

- periodic ticks, but each schedule's last, which dates its next;
- the inbox's records (handled or skipped): a message redelivered after them would be
  taken as new, so the cutoff is also how long the inbox recognises a duplicate;
- process manager instances that finished or compensated, with their history;
- the processes of the bus (workers, relays, consumers) not seen since.

What is still under way is kept: a dead delivery, a running process, a key's sequence
(which numbers its next delivery).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from ..handling import scheduling
from ..models import InboxMessage, ProcessInstance, WorkerBeat
from ..wording import plural

ENDED = [ProcessInstance.Status.FINISHED, ProcessInstance.Status.COMPENSATED]


@dataclass(frozen=True)
class Kept:
    """One kind of record, as its rows older than the cutoff."""

    noun: str
    nouns: str
    rows: QuerySet[Any]

    def describe(self, count: int) -> str:
        return plural(count, self.noun, self.nouns)

    def delete(self) -> int:
        """Delete the rows (with what cascades from them: a process's history): how many."""
        _, deleted = self.rows.delete()
        return deleted.get(self.rows.model._meta.label, 0)


def kept(using: str, before: dt.datetime) -> list[Kept]:
    """Each kind of record ``prune`` deletes, as its rows from before ``before``."""
    processes = ProcessInstance.objects.using(using)
    return [
        Kept("periodic tick", "periodic ticks", scheduling.old_ticks(using, before)),
        Kept(
            "inbox message",
            "inbox messages",
            InboxMessage.objects.using(using).filter(received_at__lt=before),
        ),
        Kept(
            "ended process manager instance",
            "ended process manager instances",
            processes.filter(status__in=ENDED, finished_at__lt=before),
        ),
        Kept(
            "worker heartbeat",  # a relay's and a consumer's too
            "worker heartbeats",
            WorkerBeat.objects.using(using).filter(seen_at__lt=before),
        ),
    ]
