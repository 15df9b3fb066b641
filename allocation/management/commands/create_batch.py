from argparse import ArgumentParser
from datetime import date
from typing import Any

from ...commands import CreateBatch
from ..arguments import argument
from ..base import BusCommand


class Command(BusCommand):
    help = "Add a batch of stock (and its product, if the SKU is new)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("ref", type=argument(CreateBatch, "ref"), help="The batch's reference.")
        parser.add_argument("sku", type=argument(CreateBatch, "sku"), help="The product's SKU.")
        parser.add_argument(
            "qty", type=argument(CreateBatch, "qty"), help="The purchased quantity."
        )
        parser.add_argument(
            "--eta",
            type=argument(CreateBatch, "eta"),
            help="Arrival date (YYYY-MM-DD); leave out if in stock.",
        )

    def handle(
        self, *args: Any, ref: str, sku: str, qty: int, eta: date | None, **options: Any
    ) -> None:
        self.issue(CreateBatch(ref=ref, sku=sku, qty=qty, eta=eta))
        self.stdout.write(self.style.SUCCESS(f"Created batch {ref}: {qty} x {sku}"))
