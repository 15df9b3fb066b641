"""Commands: what a user asks the allocation service to do."""

from dataclasses import dataclass
from datetime import date

import messagebus


@dataclass(frozen=True)
class CreateBatch(messagebus.Command):
    ref: str
    sku: str
    qty: int
    eta: date | None = None


@dataclass(frozen=True)
class Allocate(messagebus.Command):
    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class ChangeBatchQuantity(messagebus.Command):
    ref: str
    qty: int
