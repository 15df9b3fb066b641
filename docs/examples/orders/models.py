from django.db import models

import messagebus

from .events import OrderPlaced


class Order(messagebus.Aggregate, models.Model):
    """An aggregate: it records events, which the unit of work stores in the outbox."""

    orderid = models.CharField(max_length=50, unique=True)
    sku = models.CharField(max_length=50)
    qty = models.PositiveIntegerField()

    def __str__(self) -> str:
        return self.orderid

    def place(self) -> None:
        self.record(OrderPlaced(orderid=self.orderid))
