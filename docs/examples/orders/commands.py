from dataclasses import dataclass

import messagebus


@dataclass(frozen=True)
class PlaceOrder(messagebus.Command):
    orderid: str
    sku: str
    qty: int
