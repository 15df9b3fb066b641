from argparse import ArgumentParser
from typing import Any

from ...commands import ChangeBatchQuantity
from ..arguments import argument
from ..base import BusCommand


class Command(BusCommand):
    help = "Change a batch's purchased quantity; lines that no longer fit are reallocated."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "ref", type=argument(ChangeBatchQuantity, "ref"), help="The batch's reference."
        )
        parser.add_argument(
            "qty", type=argument(ChangeBatchQuantity, "qty"), help="The new purchased quantity."
        )

    def handle(self, *args: Any, ref: str, qty: int, **options: Any) -> None:
        self.issue(ChangeBatchQuantity(ref=ref, qty=qty))
        self.stdout.write(self.style.SUCCESS(f"Batch {ref} now holds {qty}"))
