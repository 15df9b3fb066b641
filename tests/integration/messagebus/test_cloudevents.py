"""MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents" on the real brokers: what each transport
puts on the wire is a CloudEvent 1.0 as its protocol binding says (read back with the
plain client), its consumer takes it into the inbox as the command it stands for, and a
message that is no CloudEvent is dead-lettered with the reason while the consumer goes
on. One project plays both services, as in test_durable_brokers.py."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings
from kombu import Connection, Producer, Queue

import messagebus
from messagebus import external
from messagebus.core.envelope import Envelope
from messagebus.external import inbox, transports
from messagebus.external.cloudevents import STRUCTURED, timestamp
from messagebus.external.transports import Inbound, Settled, Unreadable, Verdict, amqp
from messagebus.models import InboxMessage, StoredEvent
from tests.brokers import needs_redis, wait_for
from tests.busapp.commands import Record
from tests.busapp.events import Sent
from tests.conftest import BROKER_URL, REDIS_URL, needs_rabbitmq
from tests.durable import Broker
from tests.integration.messagebus.test_durable_brokers import amounts, relay, store_sent

CHANNEL = "busapp_record"
FORMAT = {"EXTERNAL_FORMAT": "cloudevents"}
PREFIX = {"kafka": "ce_", "nats": "ce-", "amqp": "cloudEvents:"}
MISSING = object()  # data left out


def cloudevents_on(url: str | None):
    return override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": url, **FORMAT})


def take(count: int, channels: dict[str, str] | None = None) -> list[Inbound]:
    """Consume through the transport of the settings, into the inbox, as `messagebus
    consume` does, until ``count`` messages came (or 30 s passed)."""
    stopping = threading.Event()
    seen: list[Inbound] = []

    def receive(messages: list[Inbound]) -> list[Settled]:
        seen.extend(messages)
        if len(seen) >= count:
            stopping.set()
        return inbox.receive_batch(messages)

    ceiling = threading.Timer(30, stopping.set)
    ceiling.start()
    try:
        transport = transports.get()
        assert transport is not None
        transport.consume(channels or {CHANNEL: "busapp"}, receive, stopping)
    finally:
        ceiling.cancel()
    assert len(seen) >= count, seen
    return seen


def attributes(n: int | str, **more: str) -> dict[str, str]:
    """A CloudEvent's attributes as another service writes them, its id ``n``."""
    return {
        "specversion": "1.0", "id": str(n), "source": "/elsewhere", "type": "shop.Recorded",
        **more,
    }  # fmt: skip


def structured(found: dict[str, str], data: object = MISSING) -> bytes:
    return json.dumps({**found, **({} if data is MISSING else {"data": data})}).encode()


def skipped() -> dict[str, str]:
    return dict(InboxMessage.objects.filter(status="skipped").values_list("message_id", "reason"))


def test_the_inbox_skips_an_unreadable_message_with_the_reason(transactional_db):
    reason = "not a CloudEvent: no header ce_id"
    bad = (CHANNEL, Unreadable(b'{"n": 1}', reason), "m-1", None)  # a fine body, but
    good = (CHANNEL, b'{"n": 2}', "m-2", None)

    settled = inbox.receive_batch([bad, good])

    assert [outcome.verdict for outcome in settled] == [Verdict.DEAD, Verdict.ACK]
    assert settled[0].reason == reason
    assert skipped() == {"m-1": reason}
    assert amounts() == [2]


# Redis Streams, NATS JetStream, Kafka


def kept_event(broker: Broker, data: bytes, fields: dict[str, str]) -> tuple[dict[str, str], Any]:
    """The attributes and the data of the CloudEvent a broker keeps, as its binding has it."""
    if broker.name == "redis+stream":
        assert fields["content-type"] == STRUCTURED
        assert "message_id" not in fields  # the id is the event's
        event = json.loads(data)
        return event, event.pop("data")
    prefix = PREFIX[broker.name]
    found = {name.removeprefix(prefix): v for name, v in fields.items() if name.startswith(prefix)}
    if broker.name == "kafka":
        assert "message_id" not in fields
        found["datacontenttype"] = fields["content-type"]
    return found, json.loads(data)


def test_a_round_trip_in_cloudevents(durable: Broker, consumer):
    events = store_sent(3)
    relay(durable.url, **FORMAT)
    kept = durable.messages(CHANNEL)

    assert len(kept) == 3
    for event, (data, fields) in zip(events, kept, strict=True):
        stored = StoredEvent.objects.get(id=event.message_id).created_at
        assert kept_event(durable, data, fields) == ({
            "specversion": "1.0", "id": str(event.message_id), "source": "/tests",
            "type": "busapp.Sent", "datacontenttype": "application/json",
            "time": timestamp(stored), "correlationid": str(event.correlation_id),
        }, {"n": event.n})  # fmt: skip
        if durable.name == "nats":  # the server drops a copy by it
            assert fields["Nats-Msg-Id"] == str(event.message_id)

    process = consumer(durable.url, {**durable.env, "MESSAGEBUS_EXTERNAL_FORMAT": "cloudevents"})

    wait_for(lambda: durable.waiting(CHANNEL) == 0 and len(amounts()) >= 3,
             output=lambda: process.output)  # fmt: skip
    assert amounts() == [0, 1, 2]
    handled = set(InboxMessage.objects.values_list("message_id", flat=True))
    assert handled == {str(event.message_id) for event in events}


def test_what_is_no_cloudevent_is_dead_lettered_with_the_reason_and_the_consumer_goes_on(
    durable: Broker, transactional_db
):
    def put(key: str, found: dict[str, str], data: object = MISSING, whole: bool = False):
        """Under the broker's own message id ``key``: the whole event in one JSON object
        (a stream's always), else its data as the body and its attributes as headers."""
        if whole or durable.name == "redis+stream":
            durable.publish(CHANNEL, structured(found, data), key, {"content-type": STRUCTURED})
        else:
            named = {PREFIX[durable.name] + name: value for name, value in found.items()}
            durable.publish(CHANNEL, json.dumps(data).encode(), key, named)

    where = "attribute " if durable.name == "redis+stream" else f"header {PREFIX[durable.name]}"
    put("no-id", {k: v for k, v in attributes(1).items() if k != "id"}, {"n": 1})
    put("old", attributes(2, specversion="0.3"), {"n": 2})
    put("no-data", attributes(3), whole=True)
    put("no-type", {**attributes(4), "type": ""}, {"n": 4})
    put("good", attributes("good"), {"n": 7})
    reasons = {
        "no-id": f"not a CloudEvent: no {where}id",
        "old": "not a CloudEvent 1.0: specversion '0.3'",
        "no-data": "a CloudEvent without data: nothing to take in",
        "no-type": f"not a CloudEvent: {where}type is empty",
    }

    with cloudevents_on(durable.url):
        take(5)

    assert amounts() == [7]
    assert InboxMessage.objects.get(status="handled").message_id == "good"
    assert skipped() == reasons
    letters = durable.dead(CHANNEL)
    assert sorted(fields["x-reason"] for _, fields in letters) == sorted(reasons.values())
    wait_for(lambda: durable.waiting(CHANNEL) == 0)  # settled, every one


# RabbitMQ


@pytest.fixture
def wire(rabbitmq) -> Iterator[Queue]:
    """A queue of the test's own bound to busapp_record, to read what the transport sent;
    the busapp's own (what the consumer reads) emptied."""
    with Connection(BROKER_URL) as connection:
        channel = connection.default_channel
        amqp.inbound_queue(CHANNEL, "busapp")(channel).declare()
        amqp.inbound_queue(CHANNEL, "busapp")(channel).purge()
        queue = Queue(
            f"test-cloudevents-{uuid.uuid4().hex[:8]}", amqp.exchange(), routing_key=CHANNEL,
            auto_delete=True,
        )(channel)  # fmt: skip
        queue.declare()
        yield queue
        queue.delete()


@needs_rabbitmq
def test_on_rabbitmq_the_attributes_are_application_properties_and_it_round_trips(
    transactional_db, wire
):
    envelope = Envelope.of(Sent(n=5))
    with cloudevents_on(BROKER_URL):
        transport = transports.get()
        assert transport is not None
        transport.publish(CHANNEL, envelope)

        message = wire.get(no_ack=True)
        assert message is not None
        assert message.content_type == "application/json"  # datacontenttype
        assert json.loads(message.body) == {"n": 5}
        ce = {k.removeprefix("cloudEvents:"): v for k, v in message.headers.items()}
        assert set(ce) == {"specversion", "id", "source", "type", "time", "correlationid"}
        assert (ce["specversion"], ce["id"], ce["type"], ce["source"]) == (
            "1.0", str(envelope.id), "busapp.Sent", "/tests",
        )  # fmt: skip

        take(1)
    assert amounts() == [5]
    assert InboxMessage.objects.get().message_id == str(envelope.id)


@needs_rabbitmq
def test_on_rabbitmq_what_is_no_cloudevent_is_dead_lettered_with_the_reason(
    transactional_db, rabbitmq, wire
):
    with Connection(BROKER_URL) as connection:
        producer = Producer(connection.default_channel, exchange=amqp.exchange())

        def put(key: str, found: dict[str, str], data: object, **properties: Any) -> None:
            named = {"cloudEvents_" + name: value for name, value in found.items()}
            producer.publish(
                json.dumps(data), routing_key=CHANNEL, message_id=key, headers=named,
                **{"content_type": "application/json", **properties},
            )  # fmt: skip

        put("no-source", {k: v for k, v in attributes(1).items() if k != "source"}, {"n": 1})
        put("old", attributes(2, specversion="0.3"), {"n": 2})
        put("no-data", {}, attributes(3), content_type=STRUCTURED)
        put("good", attributes("good"), {"n": 7})  # the binding's next version's prefix

    with cloudevents_on(BROKER_URL):
        take(4)

    reasons = {
        "no-source": "not a CloudEvent: no header cloudEvents:source",
        "old": "not a CloudEvent 1.0: specversion '0.3'",
        "no-data": "a CloudEvent without data: nothing to take in",
    }
    assert amounts() == [7]
    assert InboxMessage.objects.get(status="handled").message_id == "good"
    assert skipped() == reasons
    dead = [m.headers["x-reason"] for m in iter(lambda: rabbitmq.dead.get(no_ack=True), None)]
    assert sorted(dead) == sorted(reasons.values())


# Redis pub/sub: on a channel of the test's own (pub/sub channels are shared by every
# database of a server)


@pytest.fixture
def pubsub_channel() -> Iterator[str]:
    channel = f"test_cloudevents_{uuid.uuid4().hex[:8]}"

    def record(body: dict[str, Any]) -> Record:
        return Record(n=body["n"])

    messagebus.consumes(channel)(record)
    yield channel
    del external.subscriptions[channel]


@needs_redis
def test_on_redis_pubsub_the_whole_event_is_one_json_object_and_it_round_trips(
    transactional_db, pubsub_channel
):
    client = redis.Redis.from_url(REDIS_URL)
    reader = client.pubsub(ignore_subscribe_messages=True)
    reader.subscribe(pubsub_channel)
    envelope = Envelope.of(Sent(n=3))
    no_id = {k: v for k, v in attributes(1).items() if k != "id"}

    def publish() -> None:  # once the consumer listens too
        wait_for(lambda: client.pubsub_numsub(pubsub_channel)[0][1] >= 2)
        transports.get().publish(pubsub_channel, envelope)
        client.publish(pubsub_channel, structured(no_id, {"n": 1}))
        client.publish(pubsub_channel, b"[1]")

    with cloudevents_on(REDIS_URL):
        publisher = threading.Thread(target=publish)
        publisher.start()
        take(3, {pubsub_channel: "busapp"})
        publisher.join()

    deadline = time.monotonic() + 10
    message = None
    while message is None and time.monotonic() < deadline:
        message = reader.get_message(timeout=1)
    assert message is not None
    event = json.loads(message["data"])
    assert event.pop("data") == {"n": 3}
    assert (event["specversion"], event["id"], event["type"]) == ("1.0", str(envelope.id),
                                                                   "busapp.Sent")  # fmt: skip
    assert amounts() == [3]
    assert InboxMessage.objects.get(status="handled").message_id == str(envelope.id)
    assert sorted(skipped().values()) == [
        "not a CloudEvent: no attribute id", "not a JSON object but list",
    ]  # fmt: skip
