"""Inbound broker messages -> commands, each handled once (an inbox keyed by message id).

``receive`` takes one message and says what the transport should do with it:
acknowledge it (handled, a duplicate, or refused: recorded either way), or
dead-letter it (malformed: not JSON, not an object, an unknown channel, a body
the translator cannot turn into a well-typed command). An error of the
database's propagates: the transport hands the message back.

``receive_batch`` takes the messages a transport has at hand in one
transaction, their inbox rows in one statement; if any command fails there,
the batch rolls back and each message is taken again on its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, IntegrityError, transaction

from . import external, logs, tracing
from .exceptions import CommandRejected, MessageBusError, MessageEncodeError
from .message_bus import bus
from .messages import Command
from .models import InboxMessage
from .serialization import to_dict
from .transports import Inbound, Verdict
from .unit_of_work import joined
from .wording import describe

logger = logs.get_logger(__name__)
Status = InboxMessage.Status


class Malformed(MessageBusError, ValueError):
    """An inbound message that cannot become a command."""


def new_id() -> str:
    """The inbox key of a message that came without an id (Redis pub/sub, which never
    delivers one twice): a key of its own, so two equal bodies are two commands."""
    return f"no-id:{uuid.uuid4()}"


def receive(
    channel: str,
    body: bytes,
    message_id: str | None,
    trace: dict[str, str] | None = None,
    *,
    using: str = DEFAULT_DB_ALIAS,
) -> Verdict:
    """Handle one inbound message, once: its inbox row commits with the command's work."""
    with tracing.consumed(channel, trace):
        return _receive(channel, body, message_id, using)


def _receive(channel: str, body: bytes, message_id: str | None, using: str) -> Verdict:
    message_id = message_id or new_id()
    text = body.decode("utf-8", errors="replace")
    try:
        command = translated(channel, body)
    except Malformed as exc:
        _skipped(using, channel, message_id, text, str(exc))
        logger.warning("Skipped message %s on %s: %s", message_id, channel, exc)
        return Verdict.DEAD
    name = type(command).__qualname__
    try:
        with transaction.atomic(using=using):
            InboxMessage.objects.using(using).create(
                message_id=message_id, channel=channel, status=Status.HANDLED,
                command=name, body=text,
            )  # fmt: skip
            bus.handle(command)
    except IntegrityError:
        if not InboxMessage.objects.using(using).filter(message_id=message_id).exists():
            raise
        logger.info("Duplicate message %s on %s: handled before", message_id, channel)
        return Verdict.ACK
    except CommandRejected as exc:
        _skipped(using, channel, message_id, text, f"{name} refused: {describe(exc)}", name)
        logger.warning("Message %s on %s: %s refused: %s", message_id, channel, name, exc)
        return Verdict.ACK
    except DatabaseError:
        raise  # the database, not the message: handed back, and the consumer waits
    except Exception as exc:
        _skipped(using, channel, message_id, text, f"{name} failed: {describe(exc)}", name)
        logger.exception("Message %s on %s: %s failed", message_id, channel, name)
        return Verdict.ACK
    logger.info("Handled message %s on %s as %s", message_id, channel, command)
    return Verdict.ACK


def receive_batch(messages: Sequence[Inbound], *, using: str = DEFAULT_DB_ALIAS) -> list[Verdict]:
    """Handle these messages, once each, in one transaction if they all go well."""
    if len(messages) == 1:
        return [receive(*messages[0], using=using)]
    verdicts: list[Verdict | None] = [None] * len(messages)
    fresh: dict[str, tuple[int, Command]] = {}  # message id -> (index, command)
    for index, (channel, body, message_id, trace) in enumerate(messages):
        try:
            command = translated(channel, body)
        except Malformed:
            verdicts[index] = receive(channel, body, message_id, trace, using=using)  # skipped
            continue
        key = message_id or new_id()
        if key in fresh:
            verdicts[index] = Verdict.ACK
            logger.info("Duplicate message %s on %s: twice in one batch", key, channel)
            continue
        fresh[key] = (index, command)
    try:
        with transaction.atomic(using=using), joined():
            inbox = InboxMessage.objects.using(using)
            for key in inbox.filter(message_id__in=fresh).values_list("message_id", flat=True):
                index, _ = fresh.pop(key)
                verdicts[index] = Verdict.ACK
                logger.info("Duplicate message %s on %s: handled before", key, messages[index][0])
            inbox.bulk_create(
                InboxMessage(
                    message_id=key, channel=messages[index][0], status=Status.HANDLED,
                    command=type(command).__qualname__,
                    body=messages[index][1].decode("utf-8", errors="replace"),
                )
                for key, (index, command) in fresh.items()
            )  # fmt: skip
            for index, command in fresh.values():
                with tracing.consumed(messages[index][0], messages[index][3]):
                    bus.handle(command, using=using)
    except Exception:  # noqa: BLE001  (one of them failed: each is taken on its own)
        logger.info("A batch of %d messages rolled back: taking them one by one", len(fresh))
        return [
            verdict or receive(*messages[index], using=using)
            for index, verdict in enumerate(verdicts)
        ]
    for key, (index, command) in fresh.items():
        verdicts[index] = Verdict.ACK
        logger.info("Handled message %s on %s as %s", key, messages[index][0], command)
    return [verdict or Verdict.ACK for verdict in verdicts]


def translated(channel: str, body: bytes) -> Command:
    """The command a message's body stands for; ``Malformed`` says why there is none."""
    subscription = external.subscriptions.get(channel)
    if subscription is None:
        raise Malformed(f"no app takes in messages on {channel!r}")
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed(f"not a JSON object but {type(data).__name__}")
    try:
        command = subscription.translate(data)
    except KeyError as exc:
        raise Malformed(f"no {exc} in {sorted(data)}") from None
    except (TypeError, ValueError) as exc:
        raise Malformed(f"{subscription.name}: {exc}") from None
    try:
        to_dict(command)  # each field checked against its annotation
    except MessageEncodeError as exc:
        raise Malformed(f"wrong type: {exc}") from None
    return command


def _skipped(
    using: str, channel: str, message_id: str, text: str, reason: str, command: str = ""
) -> None:
    InboxMessage.objects.using(using).get_or_create(
        message_id=message_id,
        defaults={"channel": channel, "status": Status.SKIPPED, "command": command,
                  "body": text, "reason": reason},
    )  # fmt: skip
