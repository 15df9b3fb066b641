"""Messages to and from other services through a broker (the book's chapter 11).

An app declares what it publishes and what it takes in, in a module
``external`` that is found as ``handlers`` is::

    # orders/external.py
    messagebus.publishes(OrderPlaced, channel="order_placed")

    @messagebus.consumes("cancel_order")
    def cancel_order(body: dict[str, Any]) -> CancelOrder:
        return CancelOrder(orderid=body["id"])

Publishing is then a delivery like any event handler's, one per event and
channel: it happens after commit, at least once, retried, and dead with the
reason if the broker keeps refusing it. With no MESSAGEBUS["EXTERNAL_URL"],
those deliveries are done without sending anything.

What comes in is handled by ``manage.py messagebus consume`` (``inbox``): the
translator turns a message's JSON body into a command, which the bus handles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.apps import apps

from ..core.envelope import Envelope
from ..core.messages import Command, Event
from ..core.registry import registry
from ..delivery import run
from ..exceptions import RegistrationError
from ..observe import logs, tracing
from . import transports

logger = logs.get_logger(__name__)

# Channel names: what Redis and RabbitMQ both take as a channel or a routing key.
CHANNEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")

publications: dict[str, type[Event]] = {}  # channel -> event type
Translator = Callable[[dict[str, Any]], Command]


@dataclass(frozen=True)
class Subscription:
    """Messages on ``channel`` become ``command`` commands, through ``translate``."""

    channel: str
    command: type[Command]
    translate: Translator

    @property
    def name(self) -> str:
        return f"{self.translate.__module__}.{self.translate.__qualname__}"

    @property
    def app(self) -> str:
        """The label of the app that takes these messages in (its module's app)."""
        module = self.translate.__module__
        config = apps.get_containing_app_config(module)
        return config.label if config else module.split(".")[0]


def consumed() -> dict[str, str]:
    """Each channel taken in -> the label of the app that takes it in."""
    return {channel: sub.app for channel, sub in sorted(subscriptions.items())}


subscriptions: dict[str, Subscription] = {}  # channel -> how its messages are taken in


def _check_channel(channel: str) -> None:
    if not channel or not set(channel) <= CHANNEL_CHARACTERS:
        raise RegistrationError(f"{channel!r} is not a channel name (letters, digits, _ - .)")


def publishes(
    event_type: type[Event], channel: str, *, key: str | None = None, **options: Any
) -> None:
    """Publish each ``event_type`` event on ``channel``, from the outbox.

    ``key`` names a field of the event: its value is the message's key where the broker
    partitions by key (Kafka), so that the events of one key stay in order.
    ``options`` are the delivery's policy, as for ``@messagebus.handler``.
    """
    _check_channel(channel)
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise RegistrationError(
            f"{event_type!r} is not an event: what is published is a messagebus.Event"
        )
    if key is not None and key not in {field.name for field in dataclasses.fields(event_type)}:
        raise RegistrationError(f"{event_type.__qualname__} has no field {key!r} to key it by")

    publisher = Publisher(channel, key)
    registry.register(event_type, publisher, name=f"publish:{channel}", bulk=publisher, **options)
    publications[channel] = event_type


@dataclass(frozen=True)
class Publisher:
    """Publishes events on ``channel``: each on its own (called), or a worker's claimed
    ones together (the handler's ``bulk``: prepared one by one, then ``publish_many``)."""

    channel: str
    key: str | None  # the field whose value keys the message, if any

    def __call__(self, event: Event) -> None:
        transport = transports.get()
        if transport is None:
            logger.debug("Not published (no EXTERNAL_URL): %s on %s", event, self.channel)
            return
        carrier: dict[str, str] = {}
        with tracing.published(self.channel, carrier):  # its context goes with the message
            transport.publish(self.channel, self._envelope(event, carrier))
        logger.info("Published %s on %s", event, self.channel)

    def prepare(self, event: Event) -> Envelope:
        """Its message, with the context of a span of its own."""
        carrier: dict[str, str] = {}
        with tracing.published(self.channel, carrier):
            return self._envelope(event, carrier)

    def send(self, envelopes: list[Envelope]) -> transports.Published:
        transport = transports.get()
        if transport is None:
            logger.debug("Not published (no EXTERNAL_URL): %d on %s", len(envelopes), self.channel)
            return [None] * len(envelopes)
        answers = transports.publish_all(transport, self.channel, envelopes)
        sent = sum(answer is None for answer in answers)
        logger.info("Published %d of %d on %s", sent, len(envelopes), self.channel)
        return answers

    def _envelope(self, event: Event, carrier: dict[str, str]) -> Envelope:
        value = None if self.key is None else str(getattr(event, self.key))
        return Envelope.of(event, carrier or None, value, _stored())


def _stored() -> dt.datetime | None:
    """When the event being published was stored, if its delivery was read with it (a
    worker's is; one run right after its commit is not: it was stored just now)."""
    job = run.current_job.get()
    return job.claim.stored if job is not None else None


def consumes(channel: str) -> Callable[[Translator], Translator]:
    """Take in messages on ``channel``: the decorated function turns a message's JSON
    body into a command (its return annotation names the command's class).

    A body it cannot translate (a missing key, a wrong value) is skipped with the reason.
    """
    _check_channel(channel)

    def register(translate: Translator) -> Translator:
        command = typing.get_type_hints(translate).get("return")
        if not (isinstance(command, type) and issubclass(command, Command)):
            raise RegistrationError(
                f"{translate.__qualname__} must be annotated to return a messagebus.Command"
            )
        if channel in subscriptions:
            raise RegistrationError(
                f"{channel!r} is already taken in by {subscriptions[channel].name}"
            )
        subscriptions[channel] = Subscription(channel, command, translate)
        return translate

    return register
