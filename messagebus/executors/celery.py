"""Send deliveries to Celery workers: a task per delivery, carrying its reference.

The task, ``messagebus.run_delivery``, is registered with the project's Celery
app by ``app.autodiscover_tasks()`` (through ``messagebus.tasks``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from celery import shared_task
from django.db import DatabaseError
from django.utils import timezone
from kombu.exceptions import OperationalError

from ..delivery import concurrent
from ..exceptions import BrokerUnreachable, MessageDecodeError
from ..observe import logs
from ..outbox import states
from ..outbox.reference import Reference
from ..wording import first_line, plural
from . import committing

logger = logs.get_logger(__name__)

# A publish that fails is tried twice more, within about a second (each try
# also bounded by CELERY_BROKER_CONNECTION_TIMEOUT): then the broker is down,
# and the deliveries are left to `messagebus relay`.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.4, "interval_max": 0.6}


@shared_task(
    name="messagebus.run_delivery",
    acks_late=True,  # acknowledged once run: a worker lost mid-task has it redelivered
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_delivery(reference: dict[str, Any], lease_until: str, stored: str | None = None) -> bool:
    """Run the delivery ``reference`` names, if it is still held until ``lease_until``.

    Its retries, delays and dead letter are the bus's, as with every executor;
    a duplicate (redelivered by the broker, or sent again by the relay) finds
    it done, or held under another lease, and does nothing. ``stored``: when
    its event was stored (its commit, as sent then), for its first run, whose
    wait is timed once it is this task's to run.
    """
    try:
        ref = Reference.from_json(reference)
        held = dt.datetime.fromisoformat(lease_until)
    except (MessageDecodeError, TypeError, ValueError) as exc:
        logger.error("Dropped a task that names no delivery: %s", exc)
        return False
    return concurrent.run_one(states.Claim(ref, 0, 0, held, _time(stored)))


def _time(stored: Any) -> dt.datetime | None:
    """The time a task says its event was stored; None if it says none it can read."""
    try:
        return dt.datetime.fromisoformat(stored) if stored is not None else None
    except (TypeError, ValueError):
        logger.warning("Ignored a task's unreadable time of storing: %r", stored)
        return None


def send(
    refs: Sequence[Reference],
    held: dt.datetime,
    stored: Sequence[dt.datetime | None] | None = None,
) -> int:
    """Send a task per delivery, each to run it under the lease ``held``; how many.

    ``stored``: for each, when its event was stored if it has not run yet (None: it has).

    Raises BrokerUnreachable once the broker stays out of reach, after handing
    back the deliveries not sent.
    """
    sent = 0
    try:
        with run_delivery.app.producer_or_acquire() as producer:
            for ref, first in zip(refs, stored or [None] * len(refs), strict=True):
                run_delivery.apply_async(
                    (ref.to_json(), held.isoformat(), first.isoformat() if first else None),
                    producer=producer,
                    retry=True,
                    retry_policy=RETRY_POLICY,
                )
                sent += 1
    except (OperationalError, OSError) as exc:
        states.unleased(refs[sent:], held)
        raise BrokerUnreachable(
            f"cannot send {plural(len(refs) - sent, 'task')} to the broker: {first_line(exc)}"
        ) from exc
    return sent


class CeleryExecutor:
    """Each delivery becomes a Celery task once the transaction that stored it commits.

    The deliveries are leased first, so the relay leaves them alone while
    their tasks are on their way; a task the broker loses lets its lease run
    out, and the relay sends the delivery again. If the broker cannot be
    reached, the commit still stands and its deliveries stay due.
    """

    def submit(self, refs: list[Reference]) -> None:
        if refs:
            committing(refs[0].using, self._committed, (ref.event_id for ref in refs))

    def retried(self, refs: list[Reference]) -> None:
        if refs:
            self._send(refs[0].using, {ref.event_id for ref in refs}, first=False)

    def _committed(self, using: str, events: set[uuid.UUID]) -> None:
        self._send(using, events, first=True)

    def _send(self, using: str, events: set[uuid.UUID], *, first: bool) -> None:
        # Two senders that happen to take the same lease may send a task twice: the
        # second finds its delivery done and does nothing.
        held = states.fresh_lease()
        try:
            refs = states.leased(using, events, held)
            send(refs, held, [timezone.now()] * len(refs) if first else None)
        except (BrokerUnreachable, DatabaseError) as exc:
            logger.warning(
                "Deliveries of %s stay due for `messagebus relay`: %s",
                plural(len(events), "event"), first_line(exc),
            )  # fmt: skip
