import os
import time

import anyio

import messagebus
from messagebus.handling.unit_of_work import UnitOfWork

from .commands import Deposit, OpenAccount, Overdrawn, Record
from .events import Audited, Deposited, Napped, Pinged, Reminded
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
