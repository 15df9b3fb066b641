"""A reference to one delivery: what an executor hands to wherever it runs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..core.envelope import Envelope
from ..exceptions import MessageDecodeError


@dataclass(frozen=True)
class Reference:
    """Delivery of event ``event_id`` to handler ``handler``, on database ``using``.

    It survives ``json.dumps(ref.to_json())``, so a task queue can carry it.
    In the process that stored the event it also holds the event's envelope,
    so the runner need not read it back.
    """

    using: str
    event_id: uuid.UUID
    handler: str
    envelope: Envelope | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        event = f"{self.envelope.type} {self.event_id}" if self.envelope else str(self.event_id)
        correlation = f" (correlation {self.envelope.correlation_id})" if self.envelope else ""
        return f"delivery of {event}{correlation} to {self.handler}"

    def to_json(self) -> dict[str, Any]:
        return {"using": self.using, "event": str(self.event_id), "handler": self.handler}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        try:
            return cls(str(data["using"]), uuid.UUID(data["event"]), str(data["handler"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageDecodeError(f"not a delivery reference: {exc!r}") from None

    def with_envelope(self, envelope: Envelope) -> Reference:
        return Reference(self.using, self.event_id, self.handler, envelope)
