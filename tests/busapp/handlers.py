import os
import random
import time

import anyio

import messagebus
from messagebus.handling.unit_of_work import UnitOfWork

from .commands import Deposit, OpenAccount, Overdrawn, Record
from .events import (
    Audited,
    Deposited,
    Metered,
    MeteredFor,
    Napped,
    Pinged,
    Reminded,
    Sequenced,
)  # fmt: skip
from .models import Account, Entry


@messagebus.handler
def open_account(cmd: OpenAccount, uow: UnitOfWork) -> int:
    account = Account.objects.create(name=cmd.name)
    account.open()
    return account.pk


@messagebus.handler
def deposit(cmd: Deposit) -> int:
    account = Account.objects.select_for_update().get(name=cmd.name)
    if account.balance + cmd.amount < 0:
        raise Overdrawn(f"{cmd.name} cannot go below zero")
    account.deposit(cmd.amount)
    account.save()
    return account.balance


@messagebus.handler
def write_entry(event: Deposited) -> None:
    Entry.objects.create(account=event.name, amount=event.amount, note="deposited")


@messagebus.handler
def audit(event: Deposited, uow: UnitOfWork) -> None:
    uow.publish(Audited(name=event.name, amount=event.amount))


@messagebus.handler
def write_audit_entry(event: Audited) -> None:
    Entry.objects.create(account=event.name, amount=event.amount, note="audited")


@messagebus.handler
def record_ping(event: Pinged) -> None:
    """Write a row, and a line to $BUSAPP_PING_LOG: a second run would show there."""
    Entry.objects.create(account="ping", amount=event.n)
    if path := os.environ.get("BUSAPP_PING_LOG"):
        with open(path, "a") as log:
            log.write(f"{event.n} {os.getpid()}\n")
    if pause := float(os.environ.get("BUSAPP_PING_SLEEP", "0")):
        time.sleep(pause)


@messagebus.handler
def note_reminder(event: Reminded) -> None:
    """Write a row, and a line "n time pid" to $BUSAPP_REMINDER_LOG as it runs."""
    Entry.objects.create(account="reminder", amount=event.n)
    if path := os.environ.get("BUSAPP_REMINDER_LOG"):
        with open(path, "a") as log:
            log.write(f"{event.n} {time.time()} {os.getpid()}\n")


@messagebus.handler
def record(cmd: Record) -> None:
    Entry.objects.create(account="record", amount=cmd.n)


@messagebus.handler
async def nap(event: Napped) -> None:
    """Sleep on the event loop; a line to $BUSAPP_NAP_LOG as it starts and as it ends."""
    log(f"start {event.n} {time.time()}")
    await anyio.sleep(event.seconds)
    log(f"end {event.n} {time.time()}")


def log(line: str) -> None:
    if path := os.environ.get("BUSAPP_NAP_LOG"):
        with open(path, "a") as file:
            file.write(f"{line}\n")


def call_the_meter(event: Metered) -> None:
    """At most two at once, across every process (``CAPPED``): see ``metered``."""
    metered("meter", event.n)


def call_the_meter_for(event: MeteredFor) -> None:
    """At most two at once per account (``CAPPED``): see ``metered``."""
    metered(event.account, event.n)


def metered(account: str, n: int) -> None:
    """Write a row; to $BUSAPP_METER_LOG, a line "start|end n account time pid" before and
    after sleeping $BUSAPP_METER_SLEEP seconds: how many ran at once shows there."""
    Entry.objects.create(account=account, amount=n, note="metered")
    path = os.environ.get("BUSAPP_METER_LOG")
    for when in ("start", "end"):
        if path:
            with open(path, "a") as log:
                log.write(f"{when} {n} {account} {time.time()} {os.getpid()}\n")
        if when == "start":
            time.sleep(float(os.environ.get("BUSAPP_METER_SLEEP", "0")))


# The capped handlers, registered only where a test asks (the metered fixture of
# tests/integration/messagebus/test_concurrency.py, and $BUSAPP_METERED in its worker
# processes): elsewhere no handler has a max_concurrency, as in most projects, and the
# claims look at no slot (bench/bench_worker.py measures them so).
CAPPED = {
    call_the_meter: {"max_concurrency": 2},
    call_the_meter_for: {"max_concurrency": 2, "concurrency_key": "account"},
}


def register_capped(registry: messagebus.Registry) -> None:
    for func, options in CAPPED.items():
        registry.register(None, func, **options)


if os.environ.get("BUSAPP_METERED"):
    register_capped(messagebus.registry)


DOOMED = "doomed"  # a key whose first event its handlers reject: dead at once


def see_in_turn(event: Sequenced) -> None:
    """Write a row (the key, n); fail at random $BUSAPP_FLAKY of the calls, and always on
    the first event of a key that starts with DOOMED."""
    seen(event, "in turn")


def see_past_the_dead(event: Sequenced) -> None:
    """As ``see_in_turn``, for a handler whose keys go on past a dead event."""
    seen(event, "past the dead")


def seen(event: Sequenced, note: str) -> None:
    if event.key.startswith(DOOMED) and event.n == 0:
        raise messagebus.Reject(f"{event.key} starts doomed")
    if random.random() < float(os.environ.get("BUSAPP_FLAKY", "0")):
        raise ConnectionError("a transient failure, at random")
    Entry.objects.create(account=event.key, amount=event.n, note=note)


# The ordered handlers (Sequenced names its ordering key), registered only where a test
# asks (tests/integration/messagebus/test_ordering.py, and $BUSAPP_ORDERED in its worker
# processes): elsewhere no handler is ordered, and the claims look behind no delivery.
ORDERED = {see_in_turn: {}, see_past_the_dead: {"dead_head": "proceed"}}


def register_ordered(registry: messagebus.Registry, *, ordered: bool = True) -> None:
    """``ordered=False``: the same handlers, unordered (bench/bench_ordering.py's baseline)."""
    for func, options in ORDERED.items():
        registry.register(None, func, **(options if ordered else {"ordering_key": None}))


if mode := os.environ.get("BUSAPP_ORDERED"):  # "unordered": the same handlers, unordered
    register_ordered(messagebus.registry, ordered=mode != "unordered")
