"""An event with dict fields (seed 001's ``Event(name, payload)``) through the outbox."""

from dataclasses import dataclass

import pytest

import messagebus
from messagebus.models import Delivery, StoredEvent

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Occurred(messagebus.Event):
    name: str
    payload: dict
    counts: dict[str, int]


def test_an_event_with_dict_fields_is_stored_and_handled_as_it_was(messagebus_registry):
    got = []

    def record(event: Occurred) -> None:
        got.append(event)

    messagebus_registry.register(None, record)
    event = Occurred("signup", {"user": {"id": 7, "tags": ["new"]}, "ok": True}, {"visits": 3})

    messagebus.bus.handle(event)

    stored = StoredEvent.objects.get()
    assert stored.payload == {
        "name": "signup",
        "payload": {"user": {"id": 7, "tags": ["new"]}, "ok": True},
        "counts": {"visits": 3},
    }
    assert got == [event]
    assert Delivery.objects.get().status == Delivery.Status.DONE
