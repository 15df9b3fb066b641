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
