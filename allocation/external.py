"""What the allocation service tells other services, and takes from them (chapter 11).

The warehouse hears of each allocation on channel ``line_allocated``: the
``Allocated`` event's fields, as JSON. The purchasing system changes a
batch's quantity on channel ``change_batch_quantity``.
"""

from typing import Any

import messagebus

from .commands import ChangeBatchQuantity
from .events import Allocated

messagebus.publishes(Allocated, channel="line_allocated")


@messagebus.consumes("change_batch_quantity")
def change_batch_quantity(body: dict[str, Any]) -> ChangeBatchQuantity:
    """The purchasing system's ``{"batchref": ..., "qty": ...}``."""
    return ChangeBatchQuantity(ref=body["batchref"], qty=body["qty"])
