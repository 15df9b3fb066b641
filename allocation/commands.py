"""Commands: what a user asks the allocation service to do.

Each field says the rule it obeys (``allocation.rules``); a command checks
them as it is built, and every door (API, admin, management commands, inbound
messages) builds its fields from them.
"""

from dataclasses import dataclass
from datetime import date
from typing import Annotated

import messagebus

from . import rules

Reference = Annotated[str, rules.Identifier()]
Sku = Annotated[str, rules.Identifier()]
OrderId = Annotated[str, rules.Identifier()]
Quantity = Annotated[int, rules.Quantity()]
Eta = Annotated[date | None, rules.Day()]


@dataclass(frozen=True, kw_only=True)
class AllocationCommand(messagebus.Command):
    """A command of the allocation service: refuses to be built with a value its rules refuse."""

    def __post_init__(self) -> None:
        super().__post_init__()
        rules.check(self)


@dataclass(frozen=True)
class CreateBatch(AllocationCommand):
    ref: Reference
    sku: Sku
    qty: Quantity
    eta: Eta = None


@dataclass(frozen=True)
class Allocate(AllocationCommand):
    orderid: OrderId
    sku: Sku
    qty: Quantity


@dataclass(frozen=True)
class ChangeBatchQuantity(AllocationCommand):
    ref: Reference
    qty: Quantity
