"""How a process manager reaches the bus: its methods registered as the handlers of their
messages, and the commands it sends run by ``steps``, whose outcome it is told.

A command a process handles is its command's one handler, run in the caller's unit of
work; an event it handles is delivered as any event is, at most one delivery per
instance at once (``max_concurrency=1`` per value of its key), and a step the same way.
Whatever runs, the instance's row is locked first: its messages are handled one at a
time, with no lost update, whichever worker runs them. (Per-key ordering, once there,
also puts them in the order they were stored.)
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

from django.db import IntegrityError, transaction

from ..core.messages import Command, Event, Message
from ..core.policy import Dead
from ..core.registry import registry
from ..delivery import run
from ..exceptions import (
    CommandRejected,
    ProcessAlreadyStarted,
    ProcessNotFound,
    RegistrationError,
)
from ..handling.message_bus import bus
from ..handling.unit_of_work import UnitOfWork
from ..models import ProcessEntry, ProcessInstance
from ..observe import logs
from .manager import Kind, Outcome, ProcessManager, Status

logger = logs.get_logger(__name__)

P = TypeVar("P", bound=type[ProcessManager])
F = TypeVar("F", bound=Callable[..., Any])
STARTS, HANDLES = "starts", "handles"


def starts(method: F) -> F:
    """Mark the method whose message starts an instance (a second with its key: refused)."""
    method._messagebus_process = STARTS  # type: ignore[attr-defined]
    return method


def handles(method: F) -> F:
    """Mark a method that handles a later message of a running (or ended) instance."""
    method._messagebus_process = HANDLES  # type: ignore[attr-defined]
    return method


def messages(process: type[ProcessManager]) -> list[tuple[str, type[Message], bool]]:
    """Each marked method of ``process``: its name, its message's class, and whether it
    starts an instance."""
    found: list[tuple[str, type[Message], bool]] = []
    for name, method in inspect.getmembers(process, inspect.isfunction):
        role = getattr(method, "_messagebus_process", None)
        if role is None:
            continue
        params = list(inspect.signature(method).parameters)
        hint = typing.get_type_hints(method).get(params[1]) if len(params) == 2 else None
        if not (isinstance(hint, type) and issubclass(hint, Command | Event)):
            raise RegistrationError(
                f"{process.__qualname__}.{name} must take self and one command or event, "
                "its parameter annotated with the message's class"
            )
        found.append((name, hint, role == STARTS))
    return found


def registered() -> list[type[ProcessManager]]:
    """The process managers registered, by name."""
    return cast(list[type[ProcessManager]], registry.processes())


def process_manager(process: P) -> P:
    """Register a ``ProcessManager`` subclass: ``@messagebus.process_manager``."""
    process.name = process.name or f"{process.__module__}.{process.__qualname__}"
    if not process.key:
        raise RegistrationError(f"{process.name} names no key: set key = 'field'")
    methods = messages(process)
    if not any(starting for _, _, starting in methods):
        raise RegistrationError(f"{process.name} has no method marked @messagebus.starts")
    for method, cls, starting in methods:
        options: dict[str, Any] = {}
        if not issubclass(cls, Command):  # one message of an instance at a time
            options = {"max_concurrency": 1, "concurrency_key": process.key}
        handle = partial(_handle, process, method, starting)
        registry.register(cls, handle, name=process.name, **options)
    registry.register_process(process.name, process, partial(_step, process))
    return process


def _handle(
    process: type[ProcessManager], method: str, starting: bool, message: Message, uow: UnitOfWork
) -> Any:
    """A message of ``process``: its instance started, or found and locked, then ``method``."""
    key = str(getattr(message, process.key))
    instance = _started(process, key, uow) if starting else _locked(process, key, uow)
    manager = process(instance, uow)
    manager.handled(message)
    result = getattr(manager, method)(message)
    manager.save()
    return result


def _step(process: type[ProcessManager], command: Command, uow: UnitOfWork) -> None:
    """A command ``process`` sent, run in this delivery's unit of work (a savepoint of its
    own), and its outcome told to its instance. A failure for good (rejected, or the
    policy's last) is the instance's to deal with; any other is retried, as a delivery."""
    entries = ProcessEntry.objects.using(uow.alias)
    sent = entries.filter(message_id=command.message_id, process__name=process.name)
    key = sent.values_list("process__key", flat=True).first()
    if key is None:
        raise ProcessNotFound(
            process.name, f"that sent {type(command).__name__} {command.message_id}"
        )
    manager = process(_locked(process, key, uow), uow)
    entry = sent.get()  # read again, its instance locked
    try:
        result = bus.handle(command, using=uow.alias)
    except Exception as exc:
        if entry.kind == Kind.COMPENSATION or not _for_good(exc):
            raise  # a compensation never fails for good: dead, it waits to be retried
        manager.answered(entry, Outcome.FAILED, str(exc))
        if manager.running:
            manager.failed(command, exc)
        else:
            manager.compensate()
    else:
        manager.answered(entry, Outcome.DONE, "" if result is None else repr(result))
        manager.done(command, result)
        if manager.instance.status in (Status.COMPENSATING, Status.COMPENSATED):
            manager.compensate()
    manager.save()


def _for_good(exc: Exception) -> bool:
    """Whether a step's failure is its last: a domain's refusal, or its delivery dead."""
    if isinstance(exc, CommandRejected):
        return True
    job = run.current_job.get()
    return job is not None and isinstance(run.judged(job, exc)[0], Dead)


def _started(process: type[ProcessManager], key: str, uow: UnitOfWork) -> ProcessInstance:
    try:
        with transaction.atomic(using=uow.alias):
            return ProcessInstance.objects.using(uow.alias).create(name=process.name, key=key)
    except IntegrityError:
        raise ProcessAlreadyStarted(process.name, key) from None


def _locked(process: type[ProcessManager], key: str, uow: UnitOfWork) -> ProcessInstance:
    rows = ProcessInstance.objects.using(uow.alias).select_for_update()
    instance = rows.filter(name=process.name, key=key).first()
    if instance is None:
        raise ProcessNotFound(process.name, key)
    return instance
