"""Reads for the API (the query side): plain dicts, shaped as the API shows them."""

from datetime import date
from typing import TypedDict

from django.db.models import F

from .models import AllocationView, Batch, BatchQuerySet


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


def batches(sku: str | None = None) -> list[BatchRow]:
    """By SKU, then in the order allocation prefers them: in stock, then by ETA."""
    rows = Batch.objects.all() if sku is None else Batch.objects.filter(product_id=sku)
    return _shown(rows.order_by("product_id", F("eta").asc(nulls_first=True), "reference"))


def batch(ref: str) -> BatchRow | None:
    rows = _shown(Batch.objects.filter(reference=ref))
    return rows[0] if rows else None


def allocations(orderid: str) -> list[OrderAllocationRow]:
    """The batch each of the order's lines is allocated to, from the read model."""
    return list(AllocationView.objects.filter(orderid=orderid).values("sku", "batchref"))


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
