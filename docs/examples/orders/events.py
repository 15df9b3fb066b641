from dataclasses import dataclass

import messagebus


@dataclass(frozen=True)
class OrderPlaced(messagebus.Event):
    orderid: str
