"""The bus's own events, which apps may handle like any other (to page someone, say)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .messages import Event


@dataclass(frozen=True)
class HandlerPaused(Event):
    """``handler`` starts no delivery until resumed; ``until``: a circuit breaker's
    pause, when one delivery will probe whether its service is back."""

    type_name = "messagebus.HandlerPaused"

    handler: str
    by: str
    reason: str = ""
    until: dt.datetime | None = None


@dataclass(frozen=True)
class HandlerResumed(Event):
    """``handler`` runs its deliveries again."""

    type_name = "messagebus.HandlerResumed"

    handler: str
    by: str
