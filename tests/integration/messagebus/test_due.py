"""What is due is written twice: ``models.due`` (the ORM's, for health, the Celery
sender and a resume) and the claim's SQL (the hot path). They must take the same rows."""

import itertools
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from messagebus.models import Delivery, Pause, StoredEvent
from messagebus.outbox import states

pytestmark = pytest.mark.django_db(transaction=True)

STATUSES = [s.value for s in Delivery.Status]
LEASES = [None, -60, 60]  # none, run out a minute ago, held for a minute more
TIMES = [-60, 60]  # due a minute ago, due in a minute
PAUSES = [None, "paused", "probe: this one", "probe: another"]


def test_the_claim_takes_exactly_what_the_orm_calls_due(monkeypatch):
    monkeypatch.setattr(states, "PAUSE_RECHECK", 0)  # the pauses below made as if elsewhere
    now = timezone.now()
    for n, (status, lease, at, pause) in enumerate(
        itertools.product(STATUSES, LEASES, TIMES, PAUSES)
    ):
        event = StoredEvent.objects.create(
            id=uuid.uuid4(), type="busapp.Pinged", payload={"n": n}, correlation_id=uuid.uuid4()
        )
        handler = f"h{n}"
        Delivery.objects.create(
            event=event, handler=handler, status=status,
            lease_until=None if lease is None else now + timedelta(seconds=lease),
            next_attempt_at=now + timedelta(seconds=at),
        )  # fmt: skip
        if pause is not None:
            probe = {"probe: this one": event.id, "probe: another": uuid.uuid4()}.get(pause)
            Pause.objects.create(handler=handler, probe=probe, until=now if probe else None)

    due = set(Delivery.objects.due().values_list("pk", flat=True))
    claimed = {claim.id for claim in states.claim("default", 1000)}

    assert claimed == due
    assert len(due) == 2  # pending, no lease, time come: not paused, or its probe
