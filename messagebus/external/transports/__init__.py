"""Brokers that carry messages to other services, chosen by MESSAGEBUS["EXTERNAL_URL"].

A transport is a small class with ``publish(channel, envelope)`` and
``consume(channels, receive, stopping)``: ``redis://`` URLs get Redis pub/sub,
``redis+stream://`` ones Redis Streams, ``amqp://`` ones RabbitMQ through kombu,
``nats://`` ones NATS JetStream, ``kafka://`` ones Apache Kafka. Another broker is
another class with the same methods, built from its URL, and a line in
``conf.TRANSPORTS``: the bus does not change. A transport that can tell how far its
consumers are behind has ``lag(channels)`` too, for ``/health/`` and ``/metrics``; one
that can put many messages on the broker at once has ``publish_many(channel, envelopes)``
(``publish_all`` calls it, or ``publish`` for each where a transport has none).
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol, cast

from django.utils.module_loading import import_string

from ... import conf
from ...core.envelope import Envelope
from ...exceptions import ConfigurationError
from ..cloudevents import Binding, NotACloudEvent
from ..cloudevents import headers as event_headers
from ..cloudevents import read as read_event
from ..cloudevents import structured as structured_event


class Verdict(enum.Enum):
    """What a consumer does with a message it was given."""

    ACK = "ack"  # done with: handled, or a copy of one handled before
    DEAD = "dead"  # its own fault: dead-letter it where the broker can (the inbox keeps it)


class Settled(NamedTuple):
    """A message's verdict, and for a dead one the reason (the broker keeps it too)."""

    verdict: Verdict
    reason: str = ""


ACKED = Settled(Verdict.ACK)

# A message that came in: (channel, body, its id or None if it came without one, the
# trace context it carried or None: messagebus.tracing).
Inbound = tuple[str, bytes, str | None, dict[str, str] | None]
TRACE_HEADERS = ("traceparent", "tracestate")  # the W3C trace context's
# What became of each message given to publish_many, in order: None, the broker confirmed
# it; else the exception that says why not (refused, or no confirmation came).
Published = list[Exception | None]
# receive(messages at hand): what to do with each.
Receive = Callable[[list[Inbound]], list[Settled]]
BATCH = 100  # messages a consumer takes at a time, at most


class Lag(NamedTuple):
    """How many messages of one partition of ``channel`` its ``group`` has not taken in."""

    channel: str
    group: str
    partition: int
    messages: int


class Transport(Protocol):
    # What it raises when the broker cannot be reached: the consumer backs off and retries.
    connection_errors: tuple[type[Exception], ...]

    def publish(self, channel: str, envelope: Envelope) -> None:
        """Put ``envelope`` on ``channel``; return once the broker has it, else raise."""

    def consume(
        self, channels: Mapping[str, str], receive: Receive, stopping: threading.Event
    ) -> None:
        """Pass the messages on ``channels`` (channel -> the label of the app that takes
        them in) to ``receive``, as many as are at hand (up to BATCH) at a time, and
        settle each as it says, until ``stopping`` is set."""


class BatchTransport(Transport, Protocol):
    """A transport that can put many messages on its broker at once (every one here)."""

    def publish_many(self, channel: str, envelopes: Sequence[Envelope]) -> Published:
        """Put every envelope on ``channel``, in order, in as few round trips as the
        broker allows, and wait for the broker's confirmation of each: None for each it
        confirmed, the exception that says why not for each other (never None for one
        it did not confirm). May raise instead, for all of them: one of
        ``connection_errors`` for a broker out of reach, or what ``publish`` raises
        for a configuration that cannot work."""


def publish_all(transport: Transport, channel: str, envelopes: Sequence[Envelope]) -> Published:
    """``envelopes`` on ``channel`` through ``transport``: its ``publish_many`` where it has
    one, else ``publish_each``; None or an exception per envelope, in order. Only
    ``publish_many`` may raise instead, for all of them (``BatchTransport``)."""
    many = getattr(transport, "publish_many", None)
    if many is None:
        return publish_each(transport, channel, envelopes)
    published: Published = many(channel, envelopes)
    return published


def publish_each(transport: Transport, channel: str, envelopes: Sequence[Envelope]) -> Published:
    """``transport.publish`` of each envelope in turn: None for each it returned from, the
    exception it raised for each other. Once one raised a connection error (the
    transport's ``connection_errors``), the rest are not tried: each gets that error."""
    published: Published = []
    lost: Exception | None = None
    for envelope in envelopes:
        if lost is not None:
            published.append(lost)
            continue
        try:
            transport.publish(channel, envelope)
        except transport.connection_errors as exc:
            lost = exc
            published.append(exc)
        except Exception as exc:  # noqa: BLE001  (its own: refused, too large; the next may go)
            published.append(exc)
        else:
            published.append(None)
    return published


_built: dict[str, Transport] = {}
_lock = threading.Lock()


def get() -> Transport | None:
    """The transport of MESSAGEBUS["EXTERNAL_URL"] (built once); None if it is unset."""
    url = conf.settings.EXTERNAL_URL
    if not url:
        return None
    built = _built.get(url)  # every publish asks: no lock once built
    if built is not None:
        return built
    with _lock:
        if url not in _built:
            scheme = url.split(":", 1)[0]
            if scheme not in conf.TRANSPORTS:
                raise ConfigurationError(
                    f"MESSAGEBUS['EXTERNAL_URL'] {url!r}: no transport for {scheme!r}"
                )
            _built[url] = cast(Transport, import_string(conf.TRANSPORTS[scheme])(url))
        return _built[url]


def reset() -> None:
    """Close the transports built so far (those holding a loop or connection of their own)
    and forget them: the next ``get()`` builds anew."""
    with _lock:
        built = list(_built.values())
        _built.clear()
    for transport in built:
        close = getattr(transport, "close", None)
        if close is not None:
            close()


def connection_errors() -> tuple[type[Exception], ...]:
    """What the transports built so far raise when their broker cannot be reached."""
    built = list(_built.values())
    return tuple({error for transport in built for error in transport.connection_errors})


ORDERING_KEY = "ordering_key"  # the header (or field) that carries a message's ordering key


def keyed(envelope: Envelope) -> dict[str, str]:
    """The ordering key's header, for a message whose type names one (``Envelope.ordering_key``):
    a consumer, or a broker that partitions by key, keeps one key's messages in order."""
    key = envelope.ordering_key
    return {} if key is None else {ORDERING_KEY: key}


def in_cloudevents() -> bool:
    """Whether messages go out and come in as CloudEvents (MESSAGEBUS["EXTERNAL_FORMAT"]);
    ``ConfigurationError`` for a format there is none of."""
    chosen = conf.settings.EXTERNAL_FORMAT
    problem = conf.external_format(chosen)
    if problem is not None:
        raise ConfigurationError(f"MESSAGEBUS['EXTERNAL_FORMAT'] {problem}")
    return chosen == "cloudevents"


def body(envelope: Envelope, binding: Binding) -> bytes:
    """What goes on the wire: the message's own fields, as JSON (a CloudEvent's data); as
    a CloudEvent of a binding in structured content mode (Redis), the whole event."""
    if in_cloudevents() and binding.structured:
        return structured_event(envelope)
    return json.dumps(envelope.payload, separators=(",", ":")).encode()


def headers(envelope: Envelope, binding: Binding, id_name: str | None = None) -> dict[str, str]:
    """What goes with the body, as headers or fields. In the envelope format: its id (under
    ``id_name``, else ``message_id``), type, lineage, ordering key (``keyed``) and trace
    context, but for those the protocol carries as properties of its own
    (``binding.properties``). As a CloudEvent: its attributes, as ``binding`` names them,
    and its id under ``id_name`` too, where the protocol reads it there (NATS)."""
    if in_cloudevents():
        named = {id_name: str(envelope.id)} if id_name else {}
        return {**named, **event_headers(envelope, binding)}
    found = {
        id_name or "message_id": str(envelope.id),
        "type": envelope.type,
        "correlation_id": str(envelope.correlation_id),
        "causation_id": str(envelope.causation_id or ""),
        **keyed(envelope),
        **{key: value for key, value in (envelope.trace or {}).items() if key in TRACE_HEADERS},
    }
    return {key: value for key, value in found.items() if key not in binding.properties}


def trace_of(found: Mapping[str, object]) -> dict[str, str] | None:
    """The trace context among a message's headers, if it carried one."""
    trace = {key: str(found[key]) for key in TRACE_HEADERS if key in found}
    return trace or None


class Unreadable(bytes):
    """The bytes of a message that did not come in the format it had to (a CloudEvent
    without its id): the inbox skips it with ``reason``, as any malformed message."""

    reason: str

    def __new__(cls, raw: bytes, reason: str) -> Unreadable:
        made = super().__new__(cls, raw)
        made.reason = reason
        return made


def received(
    channel: str, raw: bytes, found: Mapping[str, object], binding: Binding,
    message_id: str | None,
) -> Inbound:  # fmt: skip
    """What ``receive`` takes of a message that came in on ``channel``: ``raw``, its body,
    and ``found``, its headers or fields (the protocol's content type among them as
    ``content-type``), read as the format says. In the envelope format: ``raw``,
    ``message_id`` (the id the transport found, or knows it by) and the trace context
    among ``found``. As a CloudEvent: its data, id and trace context; one that is no
    CloudEvent is ``Unreadable``, under ``message_id``."""
    trace = trace_of(found)
    if not in_cloudevents():
        return (channel, raw, message_id, trace)
    try:
        event = read_event(raw, found, binding)
    except NotACloudEvent as exc:
        return (channel, Unreadable(raw, str(exc)), message_id, trace)
    if event is None:  # a body no JSON object: the inbox says why
        return (channel, raw, message_id, trace)
    return (channel, event.data, event.id, event.trace or trace)
