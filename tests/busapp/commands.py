from dataclasses import dataclass

import messagebus


@dataclass(frozen=True)
class OpenAccount(messagebus.Command):
    name: str


@dataclass(frozen=True)
class Deposit(messagebus.Command):
    name: str
    amount: int


class Overdrawn(messagebus.CommandRejected):
    pass


@dataclass(frozen=True)
class Record(messagebus.Command):
    """Taken in from other services (tests/busapp/external.py)."""

    n: int
