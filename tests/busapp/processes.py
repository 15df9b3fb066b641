"""A process manager of the test app: a trip booked leg by leg, paid, or given up."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import messagebus

from .models import Entry


@dataclass(frozen=True)
class BookTrip(messagebus.Command):
    trip: str
    legs: tuple[str, ...]


@dataclass(frozen=True)
class Reserve(messagebus.Command):
    trip: str
    leg: str


@dataclass(frozen=True)
class CancelReservation(messagebus.Command):
    trip: str
    leg: str


@dataclass(frozen=True)
class PaymentOverdue(messagebus.Command):
    trip: str


@dataclass(frozen=True)
class TripPaid(messagebus.Event):
    trip: str


class NoSeats(messagebus.CommandRejected):
    pass


FLAKY_CALLED: set[str] = set()  # the trips whose "flaky" leg failed once (in this process)


@messagebus.handler
def reserve(cmd: Reserve) -> str:
    """Leg "full": rejected; "flaky": fails its first call; "broken": fails every call."""
    if cmd.leg == "full":
        raise NoSeats(f"no seats on {cmd.leg}")
    if cmd.leg == "broken" or (cmd.leg == "flaky" and cmd.trip not in FLAKY_CALLED):
        FLAKY_CALLED.add(cmd.trip)
        raise RuntimeError(f"{cmd.leg} is down")
    Entry.objects.create(account=cmd.trip, amount=1, note=f"reserved {cmd.leg}")
    return f"seat-{cmd.leg}"


@messagebus.handler
def cancel_reservation(cmd: CancelReservation) -> None:
    """$BUSAPP_TRIP_HANG: a file where it says it cancels, then hangs (to be killed)."""
    hang = os.environ.get("BUSAPP_TRIP_HANG")
    Entry.objects.create(account=cmd.trip, amount=-1, note=f"cancelled {cmd.leg}")
    if hang:
        with Path(hang).open("a") as log:
            log.write(f"cancelling {cmd.leg}\n")
        time.sleep(120)


@messagebus.process_manager
class Trip(messagebus.ProcessManager):
    key = "trip"

    @messagebus.starts
    def book(self, cmd: BookTrip) -> None:
        self.state.update(legs=list(cmd.legs), seats=[], paid=False)
        self.schedule(PaymentOverdue(trip=self.id), after=timedelta(hours=1))
        self._next()
        if "explode" in cmd.legs:
            raise RuntimeError("exploded after sending")

    @messagebus.handles
    def paid(self, event: TripPaid) -> None:
        self.state["paid"] = True
        if self.running and len(self.state["seats"]) == len(self.state["legs"]):
            self.finish()

    @messagebus.handles
    def overdue(self, cmd: PaymentOverdue) -> None:
        if self.running:
            self.fail("payment overdue")

    def done(self, command: Any, result: Any) -> None:
        if isinstance(command, Reserve):
            self.state["seats"].append(result)
            if self.running:
                self._next()

    def _next(self) -> None:
        left = self.state["legs"][len(self.state["seats"]) :]
        if left:
            leg = left[0]
            self.send(
                Reserve(trip=self.id, leg=leg), compensate=CancelReservation(trip=self.id, leg=leg)
            )
        elif self.state["paid"]:
            self.finish()
