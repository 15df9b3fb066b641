from datetime import date, timedelta
from typing import Any

from ...commands import Allocate, CreateBatch
from ...models import Batch
from ..base import BusCommand

# (reference, SKU, quantity, days until it arrives: None if in stock)
BATCHES = [
    ("warehouse-red-chair", "RED-CHAIR", 50, None),
    ("shipment-red-chair", "RED-CHAIR", 100, 7),
    ("warehouse-lamp", "TASTELESS-LAMP", 20, None),
    ("shipment-lamp-1", "TASTELESS-LAMP", 40, 14),
    ("shipment-lamp-2", "TASTELESS-LAMP", 40, 3),
    ("shipment-vase", "BLUE-VASE", 10, 5),
]
# (order id, SKU, quantity)
ORDER_LINES = [
    ("order-1001", "RED-CHAIR", 10),
    ("order-1001", "TASTELESS-LAMP", 2),
    ("order-1002", "RED-CHAIR", 45),
    ("order-1003", "TASTELESS-LAMP", 25),
    ("order-1003", "BLUE-VASE", 4),
]


class Command(BusCommand):
    help = "Add a few batches and allocations to look at; running it again adds nothing."

    def handle(self, *args: Any, **options: Any) -> None:
        today = date.today()
        for ref, sku, qty, days in BATCHES:
            if Batch.objects.filter(reference=ref).exists():
                continue
            eta = None if days is None else today + timedelta(days=days)
            self.issue(CreateBatch(ref=ref, sku=sku, qty=qty, eta=eta))
            self.stdout.write(f"Batch {ref}: {qty} x {sku}, {eta or 'in stock'}")
        for orderid, sku, qty in ORDER_LINES:
            batchref = self.issue(Allocate(orderid=orderid, sku=sku, qty=qty))
            self.stdout.write(f"Order {orderid}: {qty} x {sku} in {batchref or 'no batch'}")
        self.stdout.write(self.style.SUCCESS("Demo data loaded."))
