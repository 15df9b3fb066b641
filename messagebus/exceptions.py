"""The errors messagebus raises. Catch these; do not raise the base directly."""

from django.core.exceptions import ImproperlyConfigured


class MessageBusError(Exception):
    """Base class of messagebus errors (do not raise directly)."""


class RegistrationError(MessageBusError):
    """A handler cannot be registered as asked."""


class HandlerAlreadyRegistered(RegistrationError):
    """A command got a second handler, or an event the same handler twice."""


class HandlerNotFound(MessageBusError, LookupError):
    def __init__(self, message_type: type, kind: str = "command") -> None:
        super().__init__(f"No handler is registered for the {kind} {message_type.__qualname__}")


class NotPausable(MessageBusError, LookupError):
    """``pause``/``resume`` named no handler that has deliveries."""


class NotAMessage(MessageBusError, TypeError):
    def __init__(self, obj: object) -> None:
        super().__init__(
            f"bus.handle() takes a Command, an Event or a Query, not {type(obj).__qualname__}"
        )


class QuerySideEffect(MessageBusError):
    """A query handler sent a command, published or scheduled a message, or opened a unit
    of work: a query answers and changes nothing."""


class UnknownDependency(MessageBusError, LookupError):
    def __init__(self, name: str, handler: str) -> None:
        super().__init__(
            f"{handler} asks for a dependency named {name!r}, which is neither "
            f"'uow', 'bus' nor a key of MESSAGEBUS['DEPENDENCIES']"
        )


class UnitOfWorkError(MessageBusError):
    """An aggregate recorded an event where no unit of work can store it."""


class MessageDecodeError(MessageBusError, ValueError):
    """A stored or inbound message cannot be turned back into a message object."""


class MessageEncodeError(MessageBusError, TypeError):
    """A message holds a value that has no JSON form."""


class CommandRejected(MessageBusError):
    """Base for domain errors a command handler raises on purpose.

    The bus logs these without a traceback: they are answers, not faults.
    """


class ConfigurationError(MessageBusError, ImproperlyConfigured):
    """The MESSAGEBUS setting is invalid (``manage.py check`` says how)."""


class Reject(MessageBusError):
    """Raised by an event handler: this input will never work.

    The delivery is dead at once, after this one run, with the reason.
    """


class RetryLater(MessageBusError):
    """Raised by an event handler: run me again in ``seconds``.

    Not a failure: the delivery is rescheduled without counting a run.
    """

    def __init__(self, seconds: float, reason: str = "") -> None:
        super().__init__(reason or f"asked to run again in {seconds:g}s")
        self.seconds = seconds


class ScheduleError(MessageBusError, ValueError):
    """A message cannot be scheduled as asked, or a periodic schedule is declared wrongly."""


class ConcurrencyError(MessageBusError):
    """Two transactions changed the same thing at once; the bus runs the command again."""


class BrokerUnreachable(MessageBusError):
    """Tasks could not be sent to the broker; their deliveries stay due for the relay."""


class BulkAnswerError(MessageBusError):
    """A handler's ``bulk.send`` did not answer for each message it was given, one for one."""


class HandlerTimeout(MessageBusError):
    """An async handler ran past its timeout and was cancelled; the delivery is retried."""

    def __init__(self, handler: str, seconds: float) -> None:
        super().__init__(f"{handler} did not finish within {seconds:g}s and was cancelled")
        self.seconds = seconds


class ProcessAlreadyStarted(CommandRejected):
    """A command that starts a process manager named a key whose instance exists."""

    def __init__(self, process: str, key: str) -> None:
        super().__init__(f"{process} {key} has started already")
        self.process = process
        self.key = key


class ProcessNotFound(CommandRejected, LookupError):
    """A command for a process manager named a key that no instance has."""

    def __init__(self, process: str, key: str) -> None:
        super().__init__(f"No {process} {key} has started")
        self.process = process
        self.key = key


class ProcessNotRunning(MessageBusError):
    """A process manager that finished, or is compensating, was asked to send, schedule,
    finish or fail."""
