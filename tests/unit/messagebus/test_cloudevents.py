"""CloudEvents 1.0 (MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents"): an envelope written as
each broker's binding says, read back the same, and what is no CloudEvent refused with
the reason."""

import datetime as dt
import json
import re

import pytest
from django.conf import settings
from django.test import override_settings

from messagebus import conf
from messagebus.core.envelope import Envelope
from messagebus.exceptions import ConfigurationError
from messagebus.external import cloudevents, transports
from messagebus.external.cloudevents import AMQP, KAFKA, NATS, REDIS, NotACloudEvent
from messagebus.external.transports import Unreadable, body, headers, received
from tests.busapp.events import Sent, Sequenced

BINARY = {"kafka": KAFKA, "amqp": AMQP, "nats": NATS}
TRACE = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "congo=t61rcWkgMzE",
}
# RFC 3339's date-time (section 5.6), as written here: in UTC, with a fraction.
RFC_3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@pytest.fixture(autouse=True)
def in_cloudevents():
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_FORMAT": "cloudevents"}):
        yield


def envelope(**more) -> Envelope:
    """A Sequenced event caused by another, with a trace, stored at a known time."""
    cause = Sent(n=1)
    event = Sequenced(key="k 7 é", n=2, correlation_id=cause.correlation_id,
                      causation_id=cause.message_id)  # fmt: skip
    stored = dt.datetime(2025, 1, 31, 9, 30, 0, 250000, tzinfo=dt.UTC)
    return Envelope.of(event, {**TRACE, "baggage": "a=1"}, **{"stored": stored, **more})


def sent(wire: Envelope, binding: cloudevents.Binding) -> tuple[bytes, dict[str, str]]:
    """What a transport puts on the broker: the body, and the headers as a plain client
    reads them back (AMQP's content type is its own property)."""
    found = headers(wire, binding)
    if binding is AMQP:
        found["content-type"] = "application/json"
    return body(wire, binding), found


def test_each_attribute_of_an_envelope():
    wire = envelope()

    assert cloudevents.attributes(wire) == {
        "specversion": "1.0",
        "id": str(wire.id),
        "source": "/tests",  # the settings module's top package: tests.settings
        "type": "busapp.Sequenced",
        "datacontenttype": "application/json",
        "time": "2025-01-31T09:30:00.250000Z",
        "correlationid": str(wire.correlation_id),
        "causationid": str(wire.causation_id),
        "partitionkey": "k 7 é",  # its ordering key
        **TRACE,  # not the baggage: the Distributed Tracing extension has none
    }


def test_the_names_are_those_the_spec_allows_and_the_time_is_rfc_3339():
    found = cloudevents.attributes(envelope())

    for name in found:  # lower-case ASCII letters and digits, 20 at most
        assert re.fullmatch(r"[a-z0-9]{1,20}", name), name
    assert set(cloudevents.REQUIRED) <= set(found)
    assert RFC_3339.match(found["time"])
    assert dt.datetime.fromisoformat(found["time"]) == envelope().stored


def test_time_is_now_where_its_storing_is_not_known_and_utc_whatever_the_zone():
    before = dt.datetime.now(dt.UTC)
    found = cloudevents.attributes(envelope(stored=None))
    assert RFC_3339.match(found["time"]) and found["time"].endswith("Z")
    assert before <= dt.datetime.fromisoformat(found["time"]) <= dt.datetime.now(dt.UTC)
    paris = dt.timezone(dt.timedelta(hours=1))
    assert cloudevents.timestamp(dt.datetime(2025, 1, 31, 10, 30, tzinfo=paris)) == (
        "2025-01-31T09:30:00.000000Z"
    )


def test_an_event_without_a_cause_or_a_key_leaves_those_out():
    found = cloudevents.attributes(Envelope.of(Sent(n=1)))
    assert not {"causationid", "partitionkey", "traceparent", "tracestate"} & set(found)
    assert found["correlationid"] == found["id"]


def test_a_key_of_the_publisher_is_the_partition_key():
    assert cloudevents.attributes(envelope(key="orders-9"))["partitionkey"] == "orders-9"


def test_the_source_is_a_setting():
    wanted = {**settings.MESSAGEBUS, "EXTERNAL_FORMAT": "cloudevents", "EXTERNAL_SOURCE": "/shop"}
    with override_settings(MESSAGEBUS=wanted):
        assert cloudevents.attributes(envelope())["source"] == "/shop"
    assert conf.uri_reference("https://shop.example/orders") is None
    assert conf.uri_reference(None) is None
    for wrong in ("", "/my shop", 7, "/caf\u00e9"):
        assert conf.uri_reference(wrong) is not None


@pytest.mark.parametrize("transport", sorted(BINARY))
def test_binary_mode_the_body_is_the_data_and_each_attribute_a_header(transport):
    wire, binding = envelope(), BINARY[transport]

    data, found = sent(wire, binding)

    assert json.loads(data) == {"key": "k 7 é", "n": 2}
    prefix = {"kafka": "ce_", "amqp": "cloudEvents:", "nats": "ce-"}[transport]
    assert found[f"{prefix}specversion"] == "1.0" and found[f"{prefix}id"] == str(wire.id)
    assert found[f"{prefix}type"] == "busapp.Sequenced"
    assert found[f"{prefix}traceparent"] == TRACE["traceparent"]
    content_type = {"kafka": "content-type", "amqp": "content-type", "nats": "ce-datacontenttype"}
    assert found[content_type[transport]] == "application/json"
    assert "traceparent" not in found and "message_id" not in found  # not the envelope's


def test_amqp_sends_the_content_type_as_its_property_not_a_header():
    assert not {"content-type", "cloudEvents:datacontenttype"} & set(headers(envelope(), AMQP))


def test_nats_percent_encodes_its_header_values_and_keeps_its_own_id():
    wire = envelope()
    found = headers(wire, NATS, "Nats-Msg-Id")
    assert found["ce-partitionkey"] == "k%207%20%C3%A9"
    assert found["Nats-Msg-Id"] == str(wire.id)  # the server drops a copy by it


@pytest.mark.parametrize("transport", sorted(BINARY))
def test_binary_mode_round_trip(transport):
    wire, binding = envelope(), BINARY[transport]
    data, found = sent(wire, binding)

    event = cloudevents.read(data, found, binding)
    taken = received("busapp_record", data, found, binding, "the place")

    assert event is not None
    assert event.attributes == cloudevents.attributes(wire)  # every one, as written
    assert taken == ("busapp_record", data, str(wire.id), TRACE)


def test_structured_mode_the_whole_event_is_the_body():
    wire = envelope()

    data = body(wire, REDIS)

    assert json.loads(data) == {**cloudevents.attributes(wire), "data": {"key": "k 7 é", "n": 2}}
    assert headers(wire, REDIS) == {"content-type": "application/cloudevents+json"}
    taken = received("busapp_record", data, {}, REDIS, None)
    assert taken == ("busapp_record", b'{"key":"k 7 \\u00e9","n":2}', str(wire.id), TRACE)
    event = cloudevents.read(data, {}, REDIS)
    assert event is not None and event.attributes == cloudevents.attributes(wire)


@pytest.mark.parametrize("transport", sorted(BINARY))
def test_a_binary_binding_reads_a_structured_event_too(transport):
    wire = envelope()
    data = body(wire, REDIS)
    found = {"Content-Type": "application/cloudevents+json; charset=UTF-8"}

    taken = received("busapp_record", data, found, BINARY[transport], None)

    assert taken[1:] == (b'{"key":"k 7 \\u00e9","n":2}', str(wire.id), TRACE)


def test_another_event_format_is_refused():
    with pytest.raises(NotACloudEvent, match="event format this does not read: application/"):
        cloudevents.read(b"[]", {"content-type": "application/cloudevents-batch+json"}, KAFKA)


def test_amqp_reads_either_prefix_and_any_case():
    wire = envelope()
    data, found = sent(wire, AMQP)
    underscored = {key.replace("cloudEvents:", "cloudEvents_"): v for key, v in found.items()}
    shouting = {key.upper(): value for key, value in found.items()}
    for each in (underscored, shouting):
        event = cloudevents.read(data, each, AMQP)
        assert event is not None and event.id == str(wire.id)


def test_nats_decodes_percent_encoding_and_the_quoted_strings_of_older_senders():
    data, found = sent(envelope(), NATS)
    found["ce-source"] = '"/my%20shop \\"east\\""'
    event = cloudevents.read(data, found, NATS)
    assert event is not None
    assert event.attributes["partitionkey"] == "k 7 é"
    assert event.attributes["source"] == '/my shop "east"'
    found["ce-source"] = "/%C0%A0"  # an overlong encoding of a space
    with pytest.raises(NotACloudEvent, match="header ce-source is not percent-encoded UTF-8"):
        cloudevents.read(data, found, NATS)


@pytest.mark.parametrize("name", cloudevents.REQUIRED)
@pytest.mark.parametrize("transport", sorted(BINARY))
def test_a_binary_event_without_a_required_attribute_is_refused_with_the_reason(transport, name):
    binding = BINARY[transport]
    data, found = sent(envelope(), binding)
    header = binding.prefixes[0] + name
    missing = {key: value for key, value in found.items() if key != header}

    taken = received("busapp_record", data, missing, binding, "the place")

    assert isinstance(taken[1], Unreadable) and taken[1] == data
    assert taken[1].reason == f"not a CloudEvent: no header {header}"
    assert taken[2] == "the place"  # what the transport knows it by
    with pytest.raises(NotACloudEvent, match=f"^not a CloudEvent: header {header} is empty$"):
        cloudevents.read(data, {**found, header: ""}, binding)


@pytest.mark.parametrize("name", cloudevents.REQUIRED)
def test_a_structured_event_without_a_required_attribute_is_refused_with_the_reason(name):
    event = json.loads(body(envelope(), REDIS))
    del event[name]

    taken = received("busapp_record", json.dumps(event).encode(), {}, REDIS, None)

    assert isinstance(taken[1], Unreadable)
    assert taken[1].reason == f"not a CloudEvent: no attribute {name}"
    assert taken[2] is None  # pub/sub: the inbox gives it a key of its own


def test_another_spec_version_is_refused():
    data, found = sent(envelope(), KAFKA)
    with pytest.raises(NotACloudEvent, match=r"^not a CloudEvent 1.0: specversion '0.3'$"):
        cloudevents.read(data, {**found, "ce_specversion": "0.3"}, KAFKA)
    event = {**json.loads(body(envelope(), REDIS)), "specversion": 1.0}
    with pytest.raises(NotACloudEvent, match=r"^not a CloudEvent: specversion is float$"):
        cloudevents.read(json.dumps(event).encode(), {}, REDIS)


def test_a_structured_event_without_data_is_refused_and_data_base64_is_its_bytes():
    event = json.loads(body(envelope(), REDIS))
    del event["data"]
    with pytest.raises(NotACloudEvent, match=r"^a CloudEvent without data: nothing to take in$"):
        cloudevents.read(json.dumps(event).encode(), {}, REDIS)
    read = cloudevents.read(
        json.dumps({**event, "data_base64": "eyJuIjogMX0="}).encode(), {}, REDIS
    )
    assert read is not None and read.data == b'{"n": 1}'
    with pytest.raises(NotACloudEvent, match="data_base64 is not base64"):
        cloudevents.read(json.dumps({**event, "data_base64": "{{"}).encode(), {}, REDIS)


@pytest.mark.parametrize(
    "raw",
    [b"[1]", b"not json", b"\xff\xfe", b"[" * 150 + b"]" * 150, b'{"pad": "' + b"x" * 2000 + b'"}'],
)
def test_a_structured_body_that_is_no_json_object_goes_to_the_inbox_as_it_is(raw):
    """The inbox refuses it with the reason it gives any body (too large, too deep, not
    JSON, not an object), never decoded past its limits."""
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_FORMAT": "cloudevents",
                                       "INBOUND_MAX_BYTES": 1000}):  # fmt: skip
        assert received("busapp_record", raw, {}, REDIS, None) == ("busapp_record", raw, None, None)
        assert type(received("busapp_record", raw, {}, REDIS, None)[1]) is bytes


def test_the_envelope_format_is_as_it_was():
    wire = envelope()
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_FORMAT": "envelope"}):
        assert body(wire, REDIS) == body(wire, KAFKA) == b'{"key":"k 7 \\u00e9","n":2}'
        assert headers(wire, KAFKA) == {
            "message_id": str(wire.id), "type": "busapp.Sequenced",
            "correlation_id": str(wire.correlation_id), "causation_id": str(wire.causation_id),
            "ordering_key": "k 7 é", **TRACE,
        }  # fmt: skip
        assert headers(wire, NATS, "Nats-Msg-Id")["Nats-Msg-Id"] == str(wire.id)
        assert headers(wire, AMQP) == {  # the others are AMQP properties
            "causation_id": str(wire.causation_id), "ordering_key": "k 7 é", **TRACE,
        }  # fmt: skip
        found = {"message_id": "m-1", **TRACE}
        assert received("busapp_record", b"{}", found, KAFKA, "m-1") == (
            "busapp_record", b"{}", "m-1", TRACE,
        )  # fmt: skip


def test_a_format_there_is_none_of_is_a_configuration_error():
    assert conf.external_format("cloudevents") is None and conf.external_format("envelope") is None
    assert conf.external_format("xml") == "must be 'envelope' or 'cloudevents', not 'xml'"
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_FORMAT": "xml"}):
        problem = "MESSAGEBUS['EXTERNAL_FORMAT'] must be 'envelope' or 'cloudevents', not 'xml'"
        with pytest.raises(ConfigurationError, match=re.escape(problem)):
            transports.body(envelope(), KAFKA)


def test_an_unreadable_body_keeps_its_bytes_and_the_reason():
    raw = Unreadable(b"\x00abc", "not a CloudEvent: no header ce_id")
    assert raw == b"\x00abc" and raw[:2] == b"\x00a" and raw.reason.endswith("ce_id")
