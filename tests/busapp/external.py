"""What the busapp says to other services and takes from them (bench/bench_external.py)."""

from typing import Any

import messagebus

from .commands import Record
from .events import Announced, Sent

messagebus.publishes(Announced, channel="busapp_announced", key="n")
messagebus.publishes(Sent, channel="busapp_record")


@messagebus.consumes("busapp_record")
def record(body: dict[str, Any]) -> Record:
    return Record(n=body["n"])
