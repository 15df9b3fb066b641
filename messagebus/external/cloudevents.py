"""CloudEvents 1.0 (``MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents"``): an envelope as a
CloudEvent, and a CloudEvent that came in read back. The one place that maps the two.

Going out, an event is a CloudEvent with the required attributes ``specversion``
("1.0"), ``id`` (its message id), ``source`` (``MESSAGEBUS["EXTERNAL_SOURCE"]``) and
``type`` (``app_label.ClassName``), and ``datacontenttype`` ("application/json"),
``time`` (when it was stored, RFC 3339 in UTC) and these extension attributes:
``correlationid`` and ``causationid`` (its lineage; the second if it has a cause),
``partitionkey`` (the Partitioning extension: the key a broker keeps its order by, if
it has one) and ``traceparent`` / ``tracestate`` (the Distributed Tracing extension).
Its data is its fields, as JSON.

Each broker carries it as its protocol binding says (``Binding``): Kafka, AMQP and NATS
in binary content mode (the data is the body, each attribute a header), Redis, whose
pub/sub has no headers, in structured content mode (the whole event one JSON object).

Coming in, a message's content type says its mode, as the bindings say: a binding
that writes binary content mode reads structured events too. ``NotACloudEvent`` says
what makes one no CloudEvent 1.0: a required attribute missing or empty, another
``specversion``, a structured event without ``data``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import ENVIRONMENT_VARIABLE
from django.utils import timezone

from .. import conf
from ..core.envelope import Envelope
from ..exceptions import MessageBusError
from .limits import MAX_NESTING, nested_deeper

SPECVERSION = "1.0"
DATA_CONTENT_TYPE = "application/json"
STRUCTURED = "application/cloudevents+json"  # the JSON event format's media type
REQUIRED = ("specversion", "id", "source", "type")  # checked in this order
TRACE = ("traceparent", "tracestate")  # the Distributed Tracing extension's attributes
# What a header value is sent as it is, in a binding that percent-encodes (NATS): the
# printable ASCII characters but space, the double quote and the percent sign.
_PLAIN = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in '"%')
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


class NotACloudEvent(MessageBusError, ValueError):
    """A message that came in as a CloudEvent, but is not one of CloudEvents 1.0."""


@dataclass(frozen=True)
class Binding:
    """How one broker carries what goes beside a message's body.

    As a CloudEvent in binary content mode, each attribute is a header: its name behind
    ``prefixes[0]`` going out, behind any of ``prefixes`` coming in (header names are
    read in any case); its value percent-encoded where ``percent_encoded``;
    ``datacontenttype`` under the header ``content_type``, or, where that is None, as
    the protocol's own content-type property, which the transport sets. As a CloudEvent
    in structured content mode (``structured``), the whole event is the body, and
    ``content_type``, if any, the header of its media type.

    In the envelope format, ``properties`` are the headers the protocol carries as
    properties of its own (AMQP's message id, type and correlation id), left out of
    its headers.
    """

    prefixes: tuple[str, ...] = ()
    content_type: str | None = "content-type"
    structured: bool = False
    percent_encoded: bool = False
    properties: tuple[str, ...] = ()


KAFKA = Binding(("ce_",))
# AMQP 1.0's application properties are RabbitMQ's headers. v1.0.2 of the binding writes
# cloudEvents:; the binding's next version prefers cloudEvents_: both are read.
AMQP = Binding(
    ("cloudEvents:", "cloudEvents_"), content_type=None,
    properties=("message_id", "type", "correlation_id"),
)  # fmt: skip
# v1.0.2 of the NATS binding has structured content mode only; binary content mode, with
# ce- headers percent-encoded, is its next version's (NATS 2.2 and later carry headers).
NATS = Binding(("ce-",), content_type="ce-datacontenttype", percent_encoded=True)
REDIS = Binding(structured=True)


def source() -> str:
    """The ``source`` of the events published: MESSAGEBUS["EXTERNAL_SOURCE"], or "/" and
    the top package of the settings module (DJANGO_SETTINGS_MODULE ``mysite.settings``:
    "/mysite"; "/" where settings are configured in code)."""
    configured = conf.settings.EXTERNAL_SOURCE
    if configured:
        return configured
    return "/" + os.environ.get(ENVIRONMENT_VARIABLE, "").split(".")[0]


def timestamp(when: dt.datetime) -> str:
    """``when`` as RFC 3339 has it, in UTC: ``2025-01-31T09:30:00.250000Z``."""
    utc = when.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return utc.replace("+00:00", "Z")


def attributes(envelope: Envelope) -> dict[str, str]:
    """The attributes of ``envelope``'s CloudEvent, by their names in the spec."""
    key = envelope.key if envelope.key is not None else envelope.ordering_key  # Kafka's key
    found = {
        "specversion": SPECVERSION,
        "id": str(envelope.id),
        "source": source(),
        "type": envelope.type,
        "datacontenttype": DATA_CONTENT_TYPE,
        "time": timestamp(envelope.stored or timezone.now()),
        "correlationid": str(envelope.correlation_id),
    }
    if envelope.causation_id is not None:
        found["causationid"] = str(envelope.causation_id)
    if key:
        found["partitionkey"] = key
    found.update((name, value) for name, value in (envelope.trace or {}).items() if name in TRACE)
    return found


def headers(envelope: Envelope, binding: Binding) -> dict[str, str]:
    """The headers of ``envelope``'s CloudEvent on ``binding``: each attribute's in binary
    content mode; the event format's media type alone in structured content mode."""
    if binding.structured:
        return {binding.content_type: STRUCTURED} if binding.content_type else {}
    found = attributes(envelope)
    content_type = found.pop("datacontenttype")
    encoded = _percent_encoded if binding.percent_encoded else str
    named = {binding.prefixes[0] + name: encoded(value) for name, value in found.items()}
    if binding.content_type is not None:
        named[binding.content_type] = content_type
    return named


def structured(envelope: Envelope) -> bytes:
    """``envelope``'s whole CloudEvent, one JSON object (the JSON event format)."""
    event = {**attributes(envelope), "data": envelope.payload}
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CloudEvent:
    """A CloudEvent that came in: its attributes, by their names in the spec, and its
    data's bytes."""

    attributes: dict[str, str]
    data: bytes

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def trace(self) -> dict[str, str] | None:
        """The trace context it carried (the Distributed Tracing extension), if any."""
        found = {name: self.attributes[name] for name in TRACE if name in self.attributes}
        return found or None


def read(raw: bytes, found: Mapping[str, object], binding: Binding) -> CloudEvent | None:
    """The CloudEvent of a message that came in: ``raw`` its body, ``found`` its headers
    (the protocol's content type among them as ``content-type``). None for a structured
    one that is no JSON object within the inbound limits: its bytes are for the inbox
    to refuse, with the reason it gives any body. ``NotACloudEvent`` says why any other
    is no CloudEvent 1.0."""
    named = {str(key).lower(): _text(value) for key, value in found.items()}
    media = named.get("content-type", "").split(";")[0].strip().lower()
    if media.startswith("application/cloudevents") and media != STRUCTURED:
        raise NotACloudEvent(f"an event format this does not read: {media} (it reads {STRUCTURED})")
    if binding.structured or media == STRUCTURED:
        return _structured(raw)
    prefixes = [prefix.lower() for prefix in binding.prefixes]
    attributes = {}
    for key, value in named.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                name = key.removeprefix(prefix)
                attributes[name] = _decoded(key, value) if binding.percent_encoded else value
                break
    if "datacontenttype" not in attributes and named.get("content-type"):
        attributes["datacontenttype"] = named["content-type"]
    _check(attributes, lambda name: f"header {binding.prefixes[0]}{name}")
    return CloudEvent(attributes, raw)


def _structured(raw: bytes) -> CloudEvent | None:
    if len(raw) > conf.settings.INBOUND_MAX_BYTES or nested_deeper(raw, MAX_NESTING):
        return None
    try:
        event: Any = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError too
        return None
    if not isinstance(event, dict):
        return None
    for name in REQUIRED:
        if name in event and not isinstance(event[name], str):
            raise NotACloudEvent(f"not a CloudEvent: {name} is {type(event[name]).__name__}")
    attributes = {
        name: value for name, value in event.items()
        if isinstance(value, str) and name not in ("data", "data_base64")
    }  # fmt: skip
    _check(attributes, lambda name: f"attribute {name}")
    if "data" in event:
        return CloudEvent(attributes, json.dumps(event["data"], separators=(",", ":")).encode())
    if "data_base64" in event:
        try:
            return CloudEvent(attributes, base64.b64decode(event["data_base64"], validate=True))
        except (binascii.Error, TypeError, ValueError) as exc:
            raise NotACloudEvent(f"not a CloudEvent: data_base64 is not base64: {exc}") from None
    raise NotACloudEvent("a CloudEvent without data: nothing to take in")


def _check(attributes: Mapping[str, str], named: Callable[[str], str]) -> None:
    """Each required attribute there, not empty, and ``specversion`` this one's."""
    for name in REQUIRED:
        if name not in attributes:
            raise NotACloudEvent(f"not a CloudEvent: no {named(name)}")
        if not attributes[name]:
            raise NotACloudEvent(f"not a CloudEvent: {named(name)} is empty")
    if attributes["specversion"] != SPECVERSION:
        version = attributes["specversion"]
        raise NotACloudEvent(f"not a CloudEvent {SPECVERSION}: specversion {version!r}")


def _text(value: object) -> str:
    """A header's value as text: AMQP's may be bytes, or a timestamp."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dt.datetime):
        return timestamp(value)
    return str(value)


def _percent_encoded(value: str) -> str:
    """``value`` percent-encoded as the NATS binding asks: space, ``"``, ``%`` and all but
    printable ASCII, as the bytes of their UTF-8."""
    return urllib.parse.quote(value, safe=_PLAIN)


def _decoded(header: str, value: str) -> str:
    """A percent-encoded header's value (in double quotes, as older senders wrote it)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _ESCAPED.sub(r"\1", value[1:-1])
    try:
        return urllib.parse.unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise NotACloudEvent(f"header {header} is not percent-encoded UTF-8") from None
