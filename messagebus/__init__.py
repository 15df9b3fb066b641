"""A signal-free command and event bus for Django.

@dataclass(frozen=True)
class Allocate(messagebus.Command):
    orderid: str

@messagebus.handler
def allocate(cmd: Allocate, uow: messagebus.UnitOfWork) -> str: ...

messagebus.bus.handle(Allocate("o1"))
messagebus.bus.handle(Allocations("o1"))   # a Query: its handler's answer
messagebus.bus.schedule(Remind("o1"), after=timedelta(hours=1))

@messagebus.process_manager          # a workflow over several messages (docs/processes.md)
class Order(messagebus.ProcessManager): ...
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the distribution's version too (pyproject.toml reads it from here)

from .core.dependencies import dependencies
from .core.events import HandlerPaused, HandlerResumed
from .core.messages import Command, Event, Message, Query
from .core.periodic import periodic
from .core.registry import Registry, handler, registry
from .exceptions import (
    CommandRejected,
    ConcurrencyError,
    HandlerAlreadyRegistered,
    HandlerNotFound,
    MessageBusError,
    MessageDecodeError,
    NotPausable,
    ProcessAlreadyStarted,
    ProcessNotFound,
    ProcessNotRunning,
    QuerySideEffect,
    RegistrationError,
    Reject,
    RetryLater,
    ScheduleError,
    UnitOfWorkError,
)

if TYPE_CHECKING:
    from .external import consumes, publishes
    from .handling.message_bus import MessageBus, bus
    from .handling.unit_of_work import Aggregate, UnitOfWork
    from .ops.pauses import pause, resume
    from .sagas import ProcessManager, handles, process_manager, starts

# These import the outbox models, so they load on first use, once apps are ready.
_LAZY = {
    "Aggregate": ".handling.unit_of_work",
    "UnitOfWork": ".handling.unit_of_work",
    "MessageBus": ".handling.message_bus",
    "bus": ".handling.message_bus",
    "publishes": ".external",
    "consumes": ".external",
    "pause": ".ops.pauses",
    "resume": ".ops.pauses",
    "ProcessManager": ".sagas",
    "process_manager": ".sagas",
    "starts": ".sagas",
    "handles": ".sagas",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'messagebus' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Aggregate",
    "Command",
    "CommandRejected",
    "ConcurrencyError",
    "Event",
    "HandlerAlreadyRegistered",
    "HandlerNotFound",
    "HandlerPaused",
    "HandlerResumed",
    "Message",
    "MessageBus",
    "MessageBusError",
    "MessageDecodeError",
    "NotPausable",
    "ProcessAlreadyStarted",
    "ProcessManager",
    "ProcessNotFound",
    "ProcessNotRunning",
    "Query",
    "QuerySideEffect",
    "RegistrationError",
    "Registry",
    "Reject",
    "RetryLater",
    "ScheduleError",
    "UnitOfWork",
    "UnitOfWorkError",
    "bus",
    "consumes",
    "dependencies",
    "handler",
    "handles",
    "pause",
    "periodic",
    "process_manager",
    "publishes",
    "registry",
    "resume",
    "starts",
]
