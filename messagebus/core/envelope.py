"""A message in transit: its type name, identity, lineage and JSON payload.

The outbox stores envelopes, and an inbox or a broker transport carries them:
each of them opens one with ``open()`` to get the message back.
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import MessageDecodeError
from .messages import Message, message_class, message_type_name
from .serialization import from_dict, to_dict


@dataclass(frozen=True)
class Envelope:
    type: str
    id: uuid.UUID
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    payload: dict[str, Any]
    # The message it was made from, while in the same process: opened without decoding.
    message: Message | None = field(default=None, compare=False, repr=False)
    # The trace it was stored in (messagebus.tracing), for its deliveries' spans.
    trace: dict[str, str] | None = field(default=None, compare=False, repr=False)
    # Its key on a broker that partitions (Kafka): messages with one key keep their order.
    key: str | None = field(default=None, compare=False, repr=False)
    # When its message was stored, where known: what a CloudEvent sends as its time.
    stored: dt.datetime | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        message: Message,
        trace: dict[str, str] | None = None,
        key: str | None = None,
        stored: dt.datetime | None = None,
    ) -> Envelope:
        return cls(
            type=message_type_name(type(message)),
            id=message.message_id,
            # A message whose own __post_init__ skipped Message's starts a chain.
            correlation_id=message.correlation_id or message.message_id,
            causation_id=message.causation_id,
            payload=to_dict(message),
            message=message,
            trace=trace,
            key=key,
            stored=stored,
        )

    @property
    def ordering_key(self) -> str | None:
        """The value of the field its message type orders by (``Message.ordering_key``), as
        text: what a transport hands the broker to keep one key's messages in order (a
        header, a subject token, a partition key). None: unordered, or the value is null."""
        cls = message_class(self.type)
        field = cls.ordering_key if cls is not None else None
        value = self.payload.get(field) if field else None
        return None if value is None else str(value)

    def open(self, kind: builtins.type[Message] = Message) -> Message:
        """The message inside; ``MessageDecodeError`` if it cannot be rebuilt as a ``kind``."""
        if self.message is not None:
            return self.message
        cls = message_class(self.type)
        if cls is None or not issubclass(cls, kind):
            raise MessageDecodeError(
                f"no {kind.__name__.lower()} class is registered under the type {self.type!r}"
            )
        message: Message = from_dict(
            cls,
            self.payload,
            message_id=self.id,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
        )
        return message

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "id": str(self.id),
            "correlation_id": str(self.correlation_id),
            "causation_id": str(self.causation_id) if self.causation_id else None,
            "payload": self.payload,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        try:
            causation = data.get("causation_id")
            return cls(
                type=str(data["type"]),
                id=uuid.UUID(data["id"]),
                correlation_id=uuid.UUID(data["correlation_id"]),
                causation_id=uuid.UUID(causation) if causation else None,
                payload=data["payload"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MessageDecodeError(f"not an envelope: {exc!r}") from None
