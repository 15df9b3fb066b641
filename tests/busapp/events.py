from dataclasses import dataclass

import messagebus


@dataclass(frozen=True)
class Opened(messagebus.Event):
    name: str


@dataclass(frozen=True)
class Deposited(messagebus.Event):
    name: str
    amount: int


@dataclass(frozen=True)
class Audited(messagebus.Event):
    """Recorded by an event handler: a second link in the chain."""

    name: str
    amount: int


@dataclass(frozen=True)
class Pinged(messagebus.Event):
    """Handled by a handler that leaves a trace outside the database too."""

    n: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 0:
            raise ValueError(f"a ping is numbered from 0, not {self.n}")


@dataclass(frozen=True)
class Announced(messagebus.Event):
    """Published to other services (tests/busapp/external.py); no handler of its own."""

    n: int


@dataclass(frozen=True)
class Napped(messagebus.Event):
    """Handled by an async handler that sleeps ``seconds`` on the event loop."""

    n: int
    seconds: float


@dataclass(frozen=True)
class Reminded(messagebus.Event):
    """Scheduled for later; its handler notes when it ran (tests of scheduling)."""

    n: int


@dataclass(frozen=True)
class Sent(messagebus.Event):
    """Published on busapp_record, which this app also takes in: a round trip through a
    broker, one project playing both services (tests of the transports)."""

    n: int


@dataclass(frozen=True)
class Metered(messagebus.Event):
    """Handled by a handler that runs at most two at once (tests of concurrency limits)."""

    n: int


@dataclass(frozen=True)
class MeteredFor(messagebus.Event):
    """Handled by a handler that runs at most two at once per account."""

    n: int
    account: str


@dataclass(frozen=True)
class Sequenced(messagebus.Event):
    """The ``n``-th event about ``key``: its handlers (``ORDERED``) see one key's in order."""

    ordering_key = "key"

    key: str
    n: int


@dataclass(frozen=True)
class Shipped(messagebus.Event):
    """Sent together by a handler with a ``bulk`` (tests of the engine's bulk path)."""

    n: int
