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
from .exceptions import InvalidCommand

Reference = Annotated[str, rules.Identifier()]
Sku = Annotated[str, rules.Identifier()]
OrderId = Annotated[str, rules.Identifier()]
Quantity = Annotated[int, rules.Quantity()]
Eta = Annotated[date | None, rules.Day()]
MAX_ORDER_LINES = 100


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


@dataclass(frozen=True)
class Deallocate(AllocationCommand):
    """Take the order's line of this SKU off its batch, for good (not allocated again)."""

    orderid: OrderId
    sku: Sku
    qty: Quantity


@dataclass(frozen=True)
class Line:
    """A line of an order: a quantity of a SKU. Checks its rules as it is built."""

    sku: Sku
    qty: Quantity

    def __post_init__(self) -> None:
        rules.check(self)


@dataclass(frozen=True)
class PlaceOrder(AllocationCommand):
    """An order of several lines, each of its own SKU: all allocated, or none
    (``allocation.processes.Order``)."""

    orderid: OrderId
    lines: tuple[Line, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        skus = [line.sku for line in self.lines]
        if not 0 < len(skus) <= MAX_ORDER_LINES or len(set(skus)) < len(skus):
            problem = f"1 to {MAX_ORDER_LINES} lines, each of its own SKU"
            raise InvalidCommand(type(self).__name__, {"lines": [problem]})


@dataclass(frozen=True)
class ConfirmOrder(AllocationCommand):
    orderid: OrderId


@dataclass(frozen=True)
class ExpireOrder(AllocationCommand):
    """An order's confirmation time ran out (the order schedules it as it is placed)."""

    orderid: OrderId
