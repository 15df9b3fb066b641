"""The allocation domain: a product aggregate, its batches and the order lines allocated to them.

``Product`` is the aggregate root and the consistency boundary: every change
to its batches goes through its methods, which work on objects in memory and
record events. Command handlers load a product with ``Product.objects.locked()``
(its row locked for the transaction, its batches with the quantity allocated
to each) and save what changed; saving is a compare-and-set on the version
besides, so a path that forgets the lock fails (``ProductChanged``, and the
bus runs the command again) rather than losing an update. A batch's order
lines are read only when they are needed (to deallocate), so allocating costs
the same however many lines a product holds. Unsaved instances start with no
batches and no allocations, so the domain can be exercised without a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from django.db import connections, models, router
from django.db.models import F, Prefetch, Q, Sum
from django.db.models.functions import Coalesce
from django.utils.functional import cached_property

import messagebus

from .events import Allocated, Deallocated, OutOfStock, Released
from .exceptions import LineAlreadyAllocated, LineDoesNotFit, ProductChanged, UnknownBatch
from .validators import IDENTIFIER_MAX_LENGTH, quantity_validators, validate_identifier


def _identifier(verbose_name: str, *, unique: bool = False) -> models.CharField[str, str]:
    return models.CharField(
        verbose_name,
        max_length=IDENTIFIER_MAX_LENGTH,
        unique=unique,
        validators=[validate_identifier],
    )


class ProductQuerySet(models.QuerySet["Product"]):
    def locked(self) -> ProductQuerySet:
        """Lock the products' rows for the transaction; load their batches with quantities."""
        batches = Prefetch("batch_set", queryset=Batch.objects.with_quantities())
        # Only the products' rows, where the database can say so (MariaDB cannot).
        of = ("self",) if connections[self.db].features.has_select_for_update_of else ()
        return self.select_for_update(of=of).prefetch_related(batches)


class Product(messagebus.Aggregate, models.Model):
    sku = _identifier("SKU", unique=True)
    version_number = models.PositiveIntegerField(default=0, editable=False)

    objects = ProductQuerySet.as_manager()
    _loaded_version: int | None = None  # what the row held when read: saves compare to it

    class Meta:
        ordering = ["sku"]

    def __str__(self) -> str:
        return self.sku

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, unless another transaction saved it first: ``ProductChanged`` then.

        An update is a compare-and-set on ``version_number``, so no code path
        loses an update, whether or not it loaded the product ``locked()``: one
        ``UPDATE`` of the fields to save (``update_fields``, or all of them)
        where the row still holds the version this instance was read with. Like
        ``QuerySet.update()``, it sends no ``pre_save`` / ``post_save`` signal.
        A new product, or one read without its version, is saved by ``Model.save()``.
        """
        loaded = self._loaded_version
        if loaded is None or self._state.adding or args or kwargs.get("force_insert"):
            super().save(*args, **kwargs)
        else:
            self._save_unless_changed(loaded, **kwargs)
        self._loaded_version = self.version_number

    def _save_unless_changed(
        self,
        loaded: int,
        *,
        force_update: bool = False,
        using: str | None = None,
        update_fields: Iterable[str] | None = None,
    ) -> None:
        using = using or router.db_for_write(type(self), instance=self)
        names = None if update_fields is None else frozenset(update_fields)
        if names is not None and not names:
            return  # as Model.save(update_fields=[]): nothing to save
        fields = [field for field in self._meta.concrete_fields if not field.primary_key]
        if names is not None:
            fields = [field for field in fields if {field.name, field.attname} & names]
            if len(fields) < len(names):
                raise ValueError(f"update_fields names a field Product lacks: {sorted(names)}")
        values = {field.name: field.pre_save(self, add=False) for field in fields}
        saved = type(self)._base_manager.using(using).filter(pk=self.pk, version_number=loaded)
        if not saved.update(**values):
            raise ProductChanged(self.sku, loaded)
        self._state.db = using

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any, **kwargs: Any) -> Product:
        # kwargs: what newer Djangos pass besides (6.1: fetch_mode).
        product = super().from_db(db, field_names, values, **kwargs)
        product._loaded_version = product.__dict__.get("version_number")
        return product

    @cached_property
    def batches(self) -> list[Batch]:
        """The product's batches: loaded once (or prefetched), then changed in memory."""
        return [] if self._state.adding else list(self.batch_set.all())

    def add_batch(self, ref: str, qty: int, eta: date | None = None) -> Batch:
        batch = Batch(reference=ref, product=self, purchased_quantity=qty, eta=eta)
        self.batches.append(batch)
        return batch

    def get_batch(self, ref: str) -> Batch:
        for batch in self.batches:
            if batch.reference == ref:
                return batch
        raise UnknownBatch(ref)

    def allocate(self, line: OrderLine) -> str | None:
        """Allocate ``line`` to the first batch that can take it; the batch's reference.

        Batches in stock (no ETA) come first, then shipments by ETA. An order
        line already allocated keeps its batch; ``LineAlreadyAllocated`` if it
        is asked for again with another quantity. None (and ``OutOfStock``)
        when no batch can take the line.
        """
        held = self._held(line)
        if held is not None:
            batch, qty = held
            if qty != line.qty:
                raise LineAlreadyAllocated(line.orderid, line.sku, qty, batch.reference)
            return batch.reference
        for batch in sorted(self.batches, key=Batch.allocation_order):
            if batch.can_allocate(line):
                batch.allocate(line)
                self.version_number += 1
                self.record(
                    Allocated(
                        orderid=line.orderid, sku=line.sku, qty=line.qty, batchref=batch.reference
                    )
                )
                return batch.reference
        self.record(OutOfStock(sku=line.sku))
        return None

    def deallocate(self, line: OrderLine) -> OrderLine | None:
        """Take the line of the same order and SKU off its batch; that line, or None.

        Records ``Deallocated`` (to be allocated again); the caller deletes the line's row.
        """
        taken = self._taken_off(line)
        return None if taken is None else self._deallocated(taken)

    def release(self, line: OrderLine) -> OrderLine | None:
        """Take the line of the same order and SKU off its batch for good (the order
        gave it up); that line, or None if none is allocated.

        Records ``Released`` and bumps the version; the caller deletes the line's row.
        """
        taken = self._taken_off(line)
        if taken is None:
            return None
        self.version_number += 1
        self.record(Released(orderid=taken.orderid, sku=taken.sku, qty=taken.qty))
        return taken

    def _taken_off(self, line: OrderLine) -> OrderLine | None:
        held = self._held(line)
        return None if held is None else held[0].deallocate(line)

    def change_batch_quantity(self, ref: str, qty: int) -> list[OrderLine]:
        """Set a batch's purchased quantity; the lines deallocated to fit it, newest first."""
        batch = self.get_batch(ref)
        batch.purchased_quantity = qty
        deallocated = []
        while batch.available_quantity < 0:
            deallocated.append(self._deallocated(batch.deallocate_one()))
        return deallocated

    def _deallocated(self, line: OrderLine) -> OrderLine:
        self.record(Deallocated(orderid=line.orderid, sku=line.sku, qty=line.qty))
        return line

    def _held(self, line: OrderLine) -> tuple[Batch, int] | None:
        """The batch holding a line of the same order and SKU, and that line's quantity."""
        for batch in self.batches:
            held = batch.held_line(line)
            if held is not None:
                return batch, held.qty
        if self._state.adding:
            return None
        stored = (
            OrderLine.objects.filter(batch__product=self, orderid=line.orderid, sku=line.sku)
            .values_list("batch__reference", "qty")
            .first()
        )
        return None if stored is None else (self.get_batch(stored[0]), stored[1])


class BatchQuerySet(models.QuerySet["Batch"]):
    def with_quantities(self) -> BatchQuerySet:
        """Annotate ``allocated`` and ``available`` quantities, computed by the database."""
        return self.annotate(allocated=Coalesce(Sum("orderline__qty"), 0)).annotate(
            available=F("purchased_quantity") - F("allocated")
        )


class Batch(models.Model):
    reference = _identifier("reference", unique=True)
    product = models.ForeignKey(
        Product, on_delete=models.PROTECT, to_field="sku", db_column="sku", verbose_name="SKU"
    )
    purchased_quantity = models.PositiveIntegerField(validators=quantity_validators)
    eta = models.DateField("ETA", null=True, blank=True, help_text="Empty: in stock.")

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["reference"]
        verbose_name_plural = "batches"
        constraints = [
            models.CheckConstraint(
                condition=Q(purchased_quantity__gte=1), name="allocation_batch_quantity_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.reference

    @property
    def sku(self) -> str:
        return self.product_id

    @cached_property
    def allocations(self) -> list[OrderLine]:
        """The lines allocated here, oldest first: read on first use, then kept in memory."""
        new = self._new_lines
        saved = {line.pk for line in new if line.pk is not None}
        stored = [] if self._state.adding else self.orderline_set.exclude(pk__in=saved)
        return [*stored, *new]

    @cached_property
    def _new_lines(self) -> list[OrderLine]:
        """Lines allocated in memory before ``allocations`` was read."""
        return []

    @cached_property
    def _stored_quantity(self) -> int:
        """The quantity allocated when loaded (annotated by ``with_quantities()``)."""
        if self._state.adding:
            return 0
        if "allocated" in self.__dict__:
            return int(self.__dict__["allocated"])
        total = self.orderline_set.aggregate(total=Coalesce(Sum("qty"), 0))["total"]
        return int(total)

    @property
    def allocated_quantity(self) -> int:
        if "allocations" in self.__dict__:
            return sum(line.qty for line in self.allocations)
        return self._stored_quantity + sum(line.qty for line in self._new_lines)

    @property
    def available_quantity(self) -> int:
        return self.purchased_quantity - self.allocated_quantity

    def allocation_order(self) -> tuple[bool, date, str]:
        """Sort key: in stock first, then earliest ETA, then reference."""
        return (self.eta is not None, self.eta or date.min, self.reference)

    def can_allocate(self, line: OrderLine) -> bool:
        return self.sku == line.sku and self.available_quantity >= line.qty

    @property
    def _known_lines(self) -> list[OrderLine]:
        """The lines memory holds: all of them once ``allocations`` was read, else the new ones."""
        return self.allocations if "allocations" in self.__dict__ else self._new_lines

    def held_line(self, line: OrderLine) -> OrderLine | None:
        """The line of the same order and SKU allocated here, as far as memory knows.

        Lines still in the database are looked for by ``Product``, in one query.
        """
        return next((held for held in self._known_lines if held.is_same_as(line)), None)

    def allocate(self, line: OrderLine) -> None:
        """Take ``line``; a line of the same order and SKU already here stays as it is.

        Raises ``LineDoesNotFit`` unless ``can_allocate(line)``, and
        ``LineAlreadyAllocated`` if the line held here has another quantity.
        """
        held = self.held_line(line)
        if held is not None:
            if held.qty != line.qty:
                raise LineAlreadyAllocated(line.orderid, line.sku, held.qty, self.reference)
            return
        if not self.can_allocate(line):
            raise LineDoesNotFit(
                self.reference, line.sku, line.qty, self.sku, self.available_quantity
            )
        line.batch = self
        self._known_lines.append(line)

    def deallocate(self, line: OrderLine) -> OrderLine | None:
        """Give up the line of the same order and SKU, if it is here; the line given up."""
        held = next((held for held in self.allocations if held.is_same_as(line)), None)
        if held is not None:
            self.allocations.remove(held)
        return held

    def deallocate_one(self) -> OrderLine:
        """Give up the most recently allocated line."""
        return self.allocations.pop()


class OrderLine(models.Model):
    """An order line, allocated to a batch: one per (order, SKU)."""

    orderid = _identifier("order id")
    sku = _identifier("SKU")
    qty = models.PositiveIntegerField("quantity", validators=quantity_validators)
    batch = models.ForeignKey(Batch, on_delete=models.PROTECT)

    class Meta:
        ordering = ["id"]
        verbose_name = "allocation"
        constraints = [
            models.UniqueConstraint(fields=["orderid", "sku"], name="allocation_one_line_per_sku"),
            models.CheckConstraint(condition=Q(qty__gte=1), name="allocation_line_qty_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.orderid}: {self.qty} x {self.sku}"

    def is_same_as(self, other: OrderLine) -> bool:
        """Whether ``other`` is a line of the same order and SKU, whatever its quantity."""
        return self.orderid == other.orderid and self.sku == other.sku


class AllocationView(models.Model):
    """Read model (CQRS): the batch each order line is allocated to, kept by event handlers."""

    orderid = models.CharField("order id", max_length=IDENTIFIER_MAX_LENGTH, db_index=True)
    sku = models.CharField("SKU", max_length=IDENTIFIER_MAX_LENGTH)
    batchref = models.CharField("batch", max_length=IDENTIFIER_MAX_LENGTH)

    class Meta:
        ordering = ["orderid", "sku"]
        verbose_name = "allocation (read model)"
        verbose_name_plural = "allocations (read model)"
        constraints = [
            models.UniqueConstraint(fields=["orderid", "sku"], name="allocation_view_one_per_sku"),
        ]

    def __str__(self) -> str:
        return f"{self.orderid}: {self.sku} from {self.batchref}"
