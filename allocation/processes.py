"""The order workflow (autodiscovered by messagebus): every line allocated or none, then
confirmed, or released when not confirmed in time.

``PlaceOrder`` starts an ``Order``: its lines are allocated one after another, each an
``Allocate`` step whose compensation is a ``Deallocate``. A line out of stock (or a SKU
unknown) rejects the order, and the lines already allocated are released, last first.
An order not confirmed within ORDER_CONFIRM_TIMEOUT seconds is released the same way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings

import messagebus

from .commands import Allocate, ConfirmOrder, Deallocate, ExpireOrder, PlaceOrder
from .exceptions import OrderClosed

PENDING, CONFIRMED, REJECTED, RELEASED = "pending", "confirmed", "rejected", "released"
STATES = (PENDING, CONFIRMED, REJECTED, RELEASED)


@messagebus.process_manager
class Order(messagebus.ProcessManager):
    key = "orderid"
    name = "allocation.Order"

    @messagebus.starts
    def place(self, cmd: PlaceOrder) -> None:
        lines = [{"sku": line.sku, "qty": line.qty, "batchref": None} for line in cmd.lines]
        self.state.update(state=PENDING, confirmed=False, lines=lines)
        timeout = timedelta(seconds=settings.ORDER_CONFIRM_TIMEOUT)
        self.schedule(ExpireOrder(orderid=self.id), after=timeout)
        self._allocate_next()

    @messagebus.handles
    def confirm(self, cmd: ConfirmOrder) -> None:
        """Confirmed: at once if every line is allocated, else once they are."""
        if self.state["state"] in (REJECTED, RELEASED):
            raise OrderClosed(self.id, self.state["state"])
        if not self.state["confirmed"]:
            self.state["confirmed"] = True
            self._finish_if_allocated()

    @messagebus.handles
    def expire(self, cmd: ExpireOrder) -> None:
        if self.running and not self.state["confirmed"]:
            self.state["state"] = RELEASED
            self.fail(f"not confirmed within {settings.ORDER_CONFIRM_TIMEOUT:g}s")

    def done(self, command: Any, result: Any) -> None:
        line = next(line for line in self.state["lines"] if line["sku"] == command.sku)
        line["batchref"] = result if isinstance(command, Allocate) else None
        if not self.running:
            return
        if result is None:
            self.state["state"] = REJECTED
            self.fail(f"Out of stock for {command.sku}")
        else:
            self._allocate_next()

    def failed(self, command: Any, error: Exception) -> None:
        self.state["state"] = REJECTED
        self.fail(str(error))

    def _allocate_next(self) -> None:
        line = next((line for line in self.state["lines"] if line["batchref"] is None), None)
        if line is None:
            self._finish_if_allocated()
            return
        sku, qty = line["sku"], line["qty"]
        self.send(
            Allocate(orderid=self.id, sku=sku, qty=qty),
            compensate=Deallocate(orderid=self.id, sku=sku, qty=qty),
        )

    def _finish_if_allocated(self) -> None:
        lines = self.state["lines"]
        if self.state["confirmed"] and all(line["batchref"] for line in lines):
            self.state["state"] = CONFIRMED
            self.finish()
