"""A process manager instance at work: what its methods may do (send a step, schedule a
timeout, finish, fail) and its compensation, one step at a time, last done first."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar

from django.db.models import QuerySet
from django.utils import timezone

from .. import outbox
from ..core.envelope import Envelope
from ..core.messages import Command, Message, message_type_name
from ..core.serialization import to_dict
from ..exceptions import ProcessNotRunning
from ..handling import executor
from ..handling.message_bus import bus
from ..handling.unit_of_work import UnitOfWork
from ..models import ProcessEntry, ProcessInstance
from ..observe import logs

logger = logs.get_logger(__name__)

Status, Kind, Outcome = ProcessInstance.Status, ProcessEntry.Kind, ProcessEntry.Outcome


class ProcessManager:
    """A workflow over several messages, its state kept in the database between them.

    Subclass it, name the ``key`` field that its messages share, mark the method that
    handles the message that starts it ``@messagebus.starts`` and the others
    ``@messagebus.handles``, and register the class with ``@messagebus.process_manager``
    (in an app's ``processes`` module, found as ``handlers`` modules are)::

        @messagebus.process_manager
        class Order(messagebus.ProcessManager):
            key = "orderid"

            @messagebus.starts
            def place(self, cmd: PlaceOrder) -> None:
                self.send(Allocate(...), compensate=Deallocate(...))

    Each method runs in the unit of work of its message, the instance's row locked: what
    it changes in ``state`` and the commands it sends commit together. A command it sends
    is a *step*: delivered from the outbox, its result handed to ``done``; one that fails
    for good (rejected, or dead) to ``failed``, which compensates by default.
    """

    key: ClassVar[str] = ""
    name: ClassVar[str] = ""  # what its instances and deliveries are stored under

    def __init__(self, instance: ProcessInstance, uow: UnitOfWork) -> None:
        self.instance = instance
        self.uow = uow

    @property
    def id(self) -> str:
        """The value of the key field in this instance's messages."""
        return self.instance.key

    @property
    def state(self) -> dict[str, Any]:
        """What this instance keeps between messages: anything JSON can hold."""
        state: dict[str, Any] = self.instance.state
        return state

    @property
    def running(self) -> bool:
        """Neither finished nor compensating (nor compensated)."""
        return self.instance.status == Status.RUNNING

    # What a subclass overrides

    def done(self, command: Command, result: Any) -> None:
        """A command this instance sent, a step or a compensation, returned ``result``."""

    def failed(self, command: Command, error: Exception) -> None:
        """A step failed for good while running: by default, compensate."""
        self.fail(f"{type(command).__name__} failed: {error}")

    # What its methods do

    def send(self, command: Command, *, compensate: Command | None = None) -> None:
        """Send ``command`` as a step, as this unit of work commits; ``compensate``: the
        command that undoes it, sent if the process fails once it is done."""
        self._require_running("send")
        self._store(command)
        undo = None if compensate is None else Envelope.of(compensate).to_json()
        self._note(Kind.STEP, command, Outcome.SENT, compensation=undo)

    def schedule(
        self, message: Message, *, at: dt.datetime | None = None, after: dt.timedelta | None = None
    ) -> uuid.UUID:
        """Send this process ``message`` later (a timeout): cancelled if it has not come
        when the process finishes or fails. Its id."""
        self._require_running("schedule")
        message_id = bus.schedule(message, at=at, after=after, using=self.uow.alias)
        self._note(Kind.TIMEOUT, message, Outcome.SENT)
        return message_id

    def finish(self) -> None:
        """Done: no more steps; its timeouts cancelled."""
        self._require_running("finish")
        self._end(Status.FINISHED)

    def fail(self, reason: str) -> None:
        """Give up: its timeouts cancelled, the steps done compensated, last first, each
        once the one before it is done (a command stored in the outbox, so a crash
        resumes where it stopped); a step still to answer, once it does."""
        self._require_running("fail")
        logger.info("Compensating %s: %s", self.instance, reason)
        self.instance.reason = reason
        self._cancel_timeouts()
        self.compensate()

    # The machinery (``registration`` calls these as a message or a step's outcome comes)

    def compensate(self) -> None:
        """Send the next compensating command, unless one is on its way; compensated once
        none is left to send and no step is left to answer."""
        history = self._history()
        if history.filter(kind=Kind.COMPENSATION, outcome=Outcome.SENT).exists():
            return
        step = (
            history.filter(kind=Kind.STEP, outcome=Outcome.DONE, compensation__isnull=False)
            .order_by("-id")
            .first()
        )
        if step is not None:
            command = Envelope.from_json(step.compensation or {}).open(Command)
            assert isinstance(command, Command)
            self._store(command)
            self._note(Kind.COMPENSATION, command, Outcome.SENT)
            self._set_outcome(step, Outcome.COMPENSATED)
            self._set_status(Status.COMPENSATING)
        elif history.filter(kind=Kind.STEP, outcome=Outcome.SENT).exists():
            self._set_status(Status.COMPENSATING)
        else:
            self._end(Status.COMPENSATED)

    def handled(self, message: Message) -> None:
        """Note a message this instance handles; one it scheduled for itself timed it out."""
        timeout = self._history().filter(kind=Kind.TIMEOUT, message_id=message.message_id)
        if timeout.update(outcome=Outcome.DONE) and self.running:
            self.instance.timed_out_at = timezone.now()
        self._note(Kind.HANDLED, message, Outcome.DONE)

    def answered(self, entry: ProcessEntry, outcome: str, detail: str) -> None:
        """A command it sent returned (``Outcome.DONE``) or failed for good."""
        entry.detail = detail
        self._set_outcome(entry, outcome)

    def save(self) -> None:
        self.instance.updated_at = timezone.now()
        self.instance.save(using=self.uow.alias)

    def _history(self) -> QuerySet[ProcessEntry]:
        return ProcessEntry.objects.using(self.uow.alias).filter(process=self.instance)

    def _store(self, command: Command) -> None:
        runner = executor.get()
        sender = (self.name, self.id)
        now = timezone.now()
        alias = self.uow.alias
        runner.submit(outbox.store_due(command, alias, now, sender=sender,
                                       wake=executor.wakes(runner)))  # fmt: skip

    def _note(self, kind: str, message: Message, outcome: str, *, compensation: Any = None) -> None:
        ProcessEntry.objects.using(self.uow.alias).create(
            process=self.instance, kind=kind, message_type=message_type_name(type(message)),
            message_id=message.message_id, payload=to_dict(message), outcome=outcome,
            compensation=compensation,
        )  # fmt: skip

    def _set_outcome(self, entry: ProcessEntry, outcome: str) -> None:
        entry.outcome = outcome
        entry.save(using=self.uow.alias, update_fields=["outcome", "detail"])

    def _set_status(self, status: str) -> None:
        self.instance.status = status
        self.instance.finished_at = None

    def _end(self, status: str) -> None:
        self._cancel_timeouts()
        self.instance.status = status
        self.instance.finished_at = timezone.now()
        logger.info("%s %s", self.instance, status)

    def _cancel_timeouts(self) -> None:
        for entry in self._history().filter(kind=Kind.TIMEOUT, outcome=Outcome.SENT):
            if bus.cancel(entry.message_id, using=self.uow.alias):
                self._set_outcome(entry, Outcome.CANCELLED)

    def _require_running(self, action: str) -> None:
        if not self.running:
            raise ProcessNotRunning(
                f"{self.instance} is {self.instance.status}: it cannot {action} any more"
            )
