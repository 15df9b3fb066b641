"""What an inbound message's bytes must be before they become a command.

Checked in this order, each before the next could be fooled: what its
transport found wrong with the format it came in (``transports.Unreadable``: a
CloudEvent without its id), its size (``MESSAGEBUS["INBOUND_MAX_BYTES"]``), its
nesting (read from the bytes, so that decoding never recurses past
``MAX_NESTING``), JSON, an object, the translator's command (whose own checks
run as it is built), each field's type. Whatever fails is ``Malformed``, with
the reason.
"""

from __future__ import annotations

import json
from typing import Any

from .. import conf, external
from ..core.messages import Command
from ..core.serialization import to_dict
from ..exceptions import MessageBusError, MessageEncodeError
from .limits import MAX_NESTING, nested_deeper
from .transports import Unreadable

KEPT_BYTES = 1024  # of a message too large to keep whole: its first bytes
REASON_LENGTH = 1000  # characters of a reason kept (the inbox, a dead letter's header)


class Malformed(MessageBusError, ValueError):
    """An inbound message that cannot become a command."""


def translated(channel: str, body: bytes) -> Command:
    """The command a message's body stands for; ``Malformed`` says why there is none."""
    subscription = external.subscriptions.get(channel)
    if subscription is None:
        raise Malformed(f"no app takes in messages on {channel!r}")
    if isinstance(body, Unreadable):
        raise Malformed(body.reason)
    limit = conf.settings.INBOUND_MAX_BYTES
    if len(body) > limit:
        raise Malformed(
            f"too large: {len(body)} bytes, over MESSAGEBUS['INBOUND_MAX_BYTES'] ({limit})"
        )
    if nested_deeper(body, MAX_NESTING):
        raise Malformed(f"not JSON: nested more than {MAX_NESTING} deep")
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError too
        raise Malformed(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed(f"not a JSON object but {type(data).__name__}")
    try:
        command = subscription.translate(data)
    except KeyError as exc:
        raise Malformed(f"no {exc} in {sorted(data)[:20]}") from None
    except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        raise Malformed(f"{subscription.name}: {exc}") from None
    try:
        to_dict(command)  # each field checked against its annotation
    except MessageEncodeError as exc:
        raise Malformed(f"wrong type: {exc}") from None
    return command


def text(body: bytes) -> str:
    """What the inbox keeps of a body: all of it, or if larger than the limit its
    first bytes; as text a database takes (no NUL character)."""
    if len(body) > conf.settings.INBOUND_MAX_BYTES:
        body = body[:KEPT_BYTES]
    return storable(body.decode("utf-8", errors="replace"))


def storable(value: str, length: int | None = None) -> str:
    """``value`` as a text column takes it: NUL, which PostgreSQL refuses, replaced, and a
    lone surrogate (JSON's "\\ud800"), which UTF-8 cannot encode, escaped."""
    value = value[:length].encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\x00", "\N{REPLACEMENT CHARACTER}")
