"""The query side: questions the API asks, answered from the read model as plain dicts.

Each query is a ``messagebus.Query`` with one handler here: the bus calls it at
once, with no unit of work, and hands back its answer (``bus.handle(query)``).
A query changes nothing: its handler only reads.
"""

from dataclasses import dataclass
from datetime import date
from typing import TypedDict

from django.db.models import F

import messagebus
from messagebus.models import ProcessInstance

from .models import AllocationView, Batch, BatchQuerySet
from .processes import Order


@dataclass(frozen=True, kw_only=True)
class ListBatches(messagebus.Query):
    sku: str | None = None


@dataclass(frozen=True, kw_only=True)
class GetBatch(messagebus.Query):
    ref: str


@dataclass(frozen=True, kw_only=True)
class GetAllocations(messagebus.Query):
    orderid: str


@dataclass(frozen=True, kw_only=True)
class GetOrder(messagebus.Query):
    orderid: str


class BatchRow(TypedDict):
    ref: str
    sku: str
    qty: int
    eta: date | None
    allocated: int
    available: int


class OrderAllocationRow(TypedDict):
    sku: str
    batchref: str


@messagebus.handler
def batches(query: ListBatches) -> list[BatchRow]:
    """By SKU, then in the order allocation prefers them: in stock, then by ETA."""
    rows = Batch.objects.all() if query.sku is None else Batch.objects.filter(product_id=query.sku)
    return _shown(rows.order_by("product_id", F("eta").asc(nulls_first=True), "reference"))


@messagebus.handler
def batch(query: GetBatch) -> BatchRow | None:
    rows = _shown(Batch.objects.filter(reference=query.ref))
    return rows[0] if rows else None


@messagebus.handler
def allocations(query: GetAllocations) -> list[OrderAllocationRow]:
    """The batch each of the order's lines is allocated to, from the read model."""
    return list(AllocationView.objects.filter(orderid=query.orderid).values("sku", "batchref"))


class OrderLineRow(TypedDict):
    sku: str
    qty: int
    batchref: str | None


class OrderRow(TypedDict):
    orderid: str
    state: str
    lines: list[OrderLineRow]


@messagebus.handler
def order(query: GetOrder) -> OrderRow | None:
    """An order placed with ``PlaceOrder``, from its process's state; None if unknown."""
    found = ProcessInstance.objects.filter(name=Order.name, key=query.orderid)
    state = found.values_list("state", flat=True).first()
    if state is None:
        return None
    return {"orderid": query.orderid, "state": state["state"], "lines": state["lines"]}


def _shown(rows: BatchQuerySet) -> list[BatchRow]:
    return list(
        rows.with_quantities().values(  # type: ignore[misc]  # stubs miss the annotations
            "eta",
            "allocated",
            "available",
            ref=F("reference"),
            sku=F("product_id"),
            qty=F("purchased_quantity"),
        )
    )
