from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from ...commands import Allocate
from ..arguments import argument
from ..base import BusCommand


class Command(BusCommand):
    help = "Allocate an order line; prints the batch's reference (out of stock: exit status 1)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("orderid", type=argument(Allocate, "orderid"), help="The order's id.")
        parser.add_argument("sku", type=argument(Allocate, "sku"), help="The SKU ordered.")
        parser.add_argument("qty", type=argument(Allocate, "qty"), help="The quantity ordered.")

    def handle(self, *args: Any, orderid: str, sku: str, qty: int, **options: Any) -> None:
        batchref = self.issue(Allocate(orderid=orderid, sku=sku, qty=qty))
        if batchref is None:  # as the API's 409: a script can tell
            raise CommandError(f"Out of stock for {sku}")
        self.stdout.write(batchref)
