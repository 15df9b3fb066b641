"""Events: what happened to a product's stock."""

from dataclasses import dataclass

import messagebus


@dataclass(frozen=True)
class Allocated(messagebus.Event):
    orderid: str
    sku: str
    qty: int
    batchref: str


@dataclass(frozen=True)
class Deallocated(messagebus.Event):
    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class OutOfStock(messagebus.Event):
    sku: str


@dataclass(frozen=True)
class Released(messagebus.Event):
    """An order gave a line up (``Deallocate``): its stock is free, not reallocated."""

    orderid: str
    sku: str
    qty: int
