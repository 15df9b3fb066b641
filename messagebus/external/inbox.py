"""Inbound broker messages -> commands, each handled once (an inbox keyed by message id).

``receive`` takes one message and says how the transport settles it: acknowledged
(handled, or a copy of one handled before), or dead, with the reason. Whatever
fails for one message is its own fault, and it is dead at once, recorded in the
inbox as skipped with the reason: a body that is too large, does not decode or
translate (``inbound``), a command the domain refuses, a value the database
refuses. Only a lost connection (``failures.is_outage``) propagates: the
transport keeps the message and the consumer waits.

``receive_batch`` takes the messages a transport has at hand in one
transaction, their inbox rows in one statement; if any fails there, the
batch rolls back and each message is taken again on its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction

from ..core.messages import Command
from ..exceptions import CommandRejected
from ..handling.message_bus import bus
from ..handling.unit_of_work import joined
from ..models import InboxMessage
from ..observe import logs, tracing
from ..wording import describe
from .failures import is_outage
from .inbound import REASON_LENGTH, Malformed, storable, text, translated
from .transports import ACKED, Inbound, Settled, Verdict

__all__ = ["Malformed", "new_id", "receive", "receive_batch", "translated"]

logger = logs.get_logger(__name__)
Status = InboxMessage.Status


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
) -> Settled:
    """Handle one inbound message, once: its inbox row commits with the command's work."""
    with tracing.consumed(channel, trace):
        return _receive(channel, body, storable(message_id or new_id(), 255), using)


def _receive(channel: str, body: bytes, message_id: str, using: str) -> Settled:
    try:
        command = translated(channel, body)
    except Exception as exc:
        if is_outage(exc):
            raise
        reason = str(exc) if isinstance(exc, Malformed) else f"not translated: {describe(exc)}"
        logger.warning("Skipped message %s on %s: %s", message_id, channel, reason)
        return _dead(using, channel, message_id, body, reason)
    name = type(command).__qualname__
    try:
        with transaction.atomic(using=using):
            InboxMessage.objects.using(using).create(
                message_id=message_id, channel=storable(channel), status=Status.HANDLED,
                command=name, body=text(body),
            )  # fmt: skip
            bus.handle(command)
    except CommandRejected as exc:
        logger.warning("Message %s on %s: %s refused: %s", message_id, channel, name, exc)
        return _dead(using, channel, message_id, body, f"{name} refused: {describe(exc)}", name)
    except Exception as exc:
        if is_outage(exc):
            raise  # the database or a broker, not the message: the consumer waits
        if isinstance(exc, IntegrityError) and _seen(using, message_id):
            logger.info("Duplicate message %s on %s: handled before", message_id, channel)
            return ACKED
        logger.exception("Message %s on %s: %s failed", message_id, channel, name)
        return _dead(using, channel, message_id, body, f"{name} failed: {describe(exc)}", name)
    logger.info("Handled message %s on %s as %s", message_id, channel, command)
    return ACKED


def receive_batch(messages: Sequence[Inbound], *, using: str = DEFAULT_DB_ALIAS) -> list[Settled]:
    """Handle these messages, once each, in one transaction if they all go well."""
    if len(messages) == 1:
        return [receive(*messages[0], using=using)]
    settled: list[Settled | None] = [None] * len(messages)
    fresh: dict[str, tuple[int, Command]] = {}  # message id -> (index, command)
    for index, (channel, body, message_id, trace) in enumerate(messages):
        try:
            command = translated(channel, body)
        except Exception as exc:
            if is_outage(exc):
                raise
            settled[index] = receive(channel, body, message_id, trace, using=using)  # dead
            continue
        key = storable(message_id or new_id(), 255)
        if key in fresh:
            settled[index] = ACKED
            logger.info("Duplicate message %s on %s: twice in one batch", key, channel)
            continue
        fresh[key] = (index, command)
    try:
        with transaction.atomic(using=using), joined():
            inbox = InboxMessage.objects.using(using)
            for key in inbox.filter(message_id__in=fresh).values_list("message_id", flat=True):
                index, _ = fresh.pop(key)
                settled[index] = ACKED
                logger.info("Duplicate message %s on %s: handled before", key, messages[index][0])
            inbox.bulk_create(
                InboxMessage(
                    message_id=key, channel=storable(messages[index][0]), status=Status.HANDLED,
                    command=type(command).__qualname__, body=text(messages[index][1]),
                )
                for key, (index, command) in fresh.items()
            )  # fmt: skip
            for index, command in fresh.values():
                with tracing.consumed(messages[index][0], messages[index][3]):
                    bus.handle(command, using=using)
    except Exception as exc:
        if is_outage(exc):
            raise
        # One of them failed: each is taken on its own, under the id it was given here
        # (a message that came without one is not handled twice).
        logger.info("A batch of %d messages rolled back: taking them one by one", len(fresh))
        for key, (index, _) in fresh.items():
            channel, body, _, trace = messages[index]
            settled[index] = receive(channel, body, key, trace, using=using)
        return [outcome or ACKED for outcome in settled]
    for key, (index, command) in fresh.items():
        settled[index] = ACKED
        logger.info("Handled message %s on %s as %s", key, messages[index][0], command)
    return [outcome or ACKED for outcome in settled]


def _seen(using: str, message_id: str) -> bool:
    return InboxMessage.objects.using(using).filter(message_id=message_id).exists()


def _dead(
    using: str, channel: str, message_id: str, body: bytes, reason: str, command: str = ""
) -> Settled:
    """Record the message as skipped with the reason; dead for the transport."""
    reason = storable(reason, REASON_LENGTH)
    try:
        InboxMessage.objects.using(using).get_or_create(
            message_id=message_id,
            defaults={"channel": storable(channel, 255), "status": Status.SKIPPED,
                      "command": command, "body": text(body), "reason": reason},
        )  # fmt: skip
    except Exception as exc:  # whatever it is, the message is dead: the broker keeps it
        if is_outage(exc):
            raise
        logger.exception("Message %s on %s: not kept in the inbox", message_id, channel)
    return Settled(Verdict.DEAD, reason)
