"""Command and event handlers of the allocation service (autodiscovered by messagebus)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import IntegrityError, transaction

import messagebus

from . import queries  # noqa: F401  (the query handlers register themselves)
from .commands import Allocate, ChangeBatchQuantity, CreateBatch, Deallocate
from .events import Allocated, Deallocated, OutOfStock, Released
from .exceptions import DuplicateBatch, InvalidSku, LineAlreadyAllocated, UnknownBatch
from .models import AllocationView, Batch, OrderLine, Product
from .notifications import Notifications
from .webhooks import post_to_all

logger = logging.getLogger(__name__)


@messagebus.handler
def add_batch(cmd: CreateBatch) -> None:
    product, _ = Product.objects.select_for_update().get_or_create(sku=cmd.sku)
    batch = product.add_batch(cmd.ref, cmd.qty, cmd.eta)
    try:
        with transaction.atomic():
            batch.save(force_insert=True)
    except IntegrityError as exc:
        if Batch.objects.filter(reference=cmd.ref).exists():
            raise DuplicateBatch(cmd.ref) from exc
        raise


def locked_product(sku: str) -> Product:
    """The product of ``sku``, locked, with its batches; ``InvalidSku`` if there is none."""
    try:
        return Product.objects.locked().get(sku=sku)
    except Product.DoesNotExist:
        raise InvalidSku(sku) from None


@messagebus.handler
def allocate(cmd: Allocate) -> str | None:
    product = locked_product(cmd.sku)
    line = OrderLine(orderid=cmd.orderid, sku=cmd.sku, qty=cmd.qty)
    batchref = product.allocate(line)
    if line.batch_id is not None:  # newly allocated: a repeat keeps the batch it has
        line.save()
        product.save(update_fields=["version_number"])
    return batchref


@messagebus.handler
def deallocate(cmd: Deallocate) -> str | None:
    """Release the order's line of the SKU; the batch it left, or None if none held it."""
    product = locked_product(cmd.sku)
    taken = product.release(OrderLine(orderid=cmd.orderid, sku=cmd.sku, qty=cmd.qty))
    if taken is None:
        return None
    batchref = taken.batch.reference
    taken.delete()
    product.save(update_fields=["version_number"])
    return batchref


@messagebus.handler
def change_batch_quantity(cmd: ChangeBatchQuantity) -> None:
    product = Product.objects.locked().filter(batch__reference=cmd.ref).first()
    if product is None:
        raise UnknownBatch(cmd.ref)
    batch = product.get_batch(cmd.ref)
    deallocated = product.change_batch_quantity(cmd.ref, cmd.qty)
    OrderLine.objects.filter(pk__in=[line.pk for line in deallocated]).delete()
    batch.save(update_fields=["purchased_quantity"])


# The read model is derived data: its handlers run in the command's transaction, so a
# read right after a write sees it, whatever the executor (the book's e2e tests GET an
# order's allocations right after POSTing it).


@messagebus.handler(run="in_transaction")
def add_allocation_to_read_model(event: Allocated) -> None:
    show_where_the_line_is(event.orderid, event.sku)


@messagebus.handler(run="in_transaction")
def remove_allocation_from_read_model(event: Deallocated) -> None:
    show_where_the_line_is(event.orderid, event.sku)


@messagebus.handler(run="in_transaction")
def remove_released_line_from_read_model(event: Released) -> None:
    show_where_the_line_is(event.orderid, event.sku)


@messagebus.handler
def reallocate(event: Deallocated, bus: messagebus.MessageBus) -> None:
    """Allocate the line again (after commit: a command of its own).

    A line the order has taken again since, with another quantity, is left as it is.
    """
    try:
        bus.handle(Allocate(orderid=event.orderid, sku=event.sku, qty=event.qty))
    except LineAlreadyAllocated as exc:
        logger.info("%s: not reallocated: %s", event, exc)


def show_where_the_line_is(orderid: str, sku: str) -> None:
    """Set the read model's row from the line as it is now, not as the event saw it.

    Events may be handled late or out of order (retries, several workers): a
    stale ``Allocated`` must not show a batch the line has left.
    """
    batchref = (
        OrderLine.objects.filter(orderid=orderid, sku=sku)
        .values_list("batch__reference", flat=True)
        .first()
    )
    if batchref is None:
        AllocationView.objects.filter(orderid=orderid, sku=sku).delete()
    else:
        AllocationView.objects.update_or_create(
            orderid=orderid, sku=sku, defaults={"batchref": batchref}
        )


async def post_allocation(event: Allocated) -> None:
    """POST the allocation as JSON to every URL in ALLOCATION_WEBHOOK_URLS (other services)."""
    body = {
        "orderid": event.orderid,
        "sku": event.sku,
        "qty": event.qty,
        "batchref": event.batchref,
    }
    await post_to_all(settings.ALLOCATION_WEBHOOK_URLS, body, key=str(event.message_id))


if settings.ALLOCATION_WEBHOOK_URLS:  # none: no delivery to it is stored
    messagebus.handler(timeout=60)(post_allocation)


@messagebus.handler
def send_out_of_stock_notification(event: OutOfStock, notifications: Notifications) -> None:
    notifications.send(settings.ALLOCATION_STOCK_EMAIL, f"Out of stock for {event.sku}")
