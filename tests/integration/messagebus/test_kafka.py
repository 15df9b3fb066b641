"""Kafka on a real Kafka-protocol broker (tansu, started by the tests): what it does that
the other brokers do not, beside the cases every durable broker runs
(test_durable_brokers.py): keys and partitions, the dead-letter topic, consumer lag."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
from django.conf import settings
from django.test import override_settings

import messagebus
from messagebus.core.envelope import Envelope
from messagebus.external import consumed, inbox, transports
from messagebus.external.failures import is_outage
from messagebus.external.transports import Inbound, Lag, Settled
from messagebus.external.transports.kafka import Unreachable
from messagebus.models import InboxMessage
from messagebus.ops.prometheus import ConsumerLagCollector
from tests.brokers import external, wait_for
from tests.busapp.events import Announced, Sent
from tests.durable import Kafka
from tests.integration.messagebus.test_durable_brokers import CHANNEL, amounts, body, relay

NO_LAG = [Lag(CHANNEL, "busapp", 0, 0), Lag("change_batch_quantity", "allocation", 0, 0)]


def take(kafka: Kafka, count: int) -> list[Inbound]:
    """Consume through the transport, as `messagebus consume` does, until ``count`` came."""
    stopping = threading.Event()
    seen: list[Inbound] = []

    def receive(messages: list[Inbound]) -> list[Settled]:
        seen.extend(messages)
        if len(seen) >= count:
            stopping.set()
        return inbox.receive_batch(messages)

    transport = transports.get()
    assert transport is not None
    transport.consume(consumed(), receive, stopping)
    return seen


def test_the_events_of_one_key_go_to_one_partition_in_the_order_they_were_stored(
    kafka: Kafka, transactional_db
):
    kafka.create("busapp_announced", 3)  # published keyed by n (tests/busapp/external.py)
    stored_only = override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"})
    events = [Announced(n=i % 5) for i in range(40)]
    with stored_only, messagebus.UnitOfWork() as uow:
        for event in events:
            uow.publish(event)

    relay(kafka.url)

    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    ids: dict[bytes | None, list[str]] = defaultdict(list)
    for partition, _, key, headers in kafka.read("busapp_announced"):
        partitions[key].add(partition)
        ids[key].append(headers["message_id"])
    assert sorted(partitions) == [b"0", b"1", b"2", b"3", b"4"]
    assert all(len(found) == 1 for found in partitions.values())
    assert len(set().union(*partitions.values())) > 1  # the keys spread over the partitions
    for n in range(5):
        assert ids[str(n).encode()] == [str(e.message_id) for e in events if e.n == n]


def test_a_dead_message_goes_to_the_dead_letter_topic_and_the_partition_moves_on(
    kafka: Kafka, transactional_db
):
    bad = b"\x00 not json"
    kafka.publish(CHANNEL, bad, "bad")
    kafka.publish(CHANNEL, body(7))  # no id: known by its place
    elsewhere = {
        **settings.MESSAGEBUS, "EXTERNAL_URL": kafka.url,
        "KAFKA_DEAD_TOPIC": "dead-letters.{channel}",
    }  # fmt: skip

    with override_settings(MESSAGEBUS=elsewhere):
        assert len(take(kafka, 2)) == 2
        assert transports.get().lag(consumed()) == NO_LAG  # committed past both

    assert amounts() == [7]
    rows = dict(InboxMessage.objects.values_list("message_id", "status"))
    assert rows == {"bad": "skipped", f"{CHANNEL}/0/1": "handled"}
    [(value, headers)] = kafka.messages(f"dead-letters.{CHANNEL}")
    assert value == bad
    assert headers["x-reason"].startswith("not JSON: ")
    assert headers["message_id"] == "bad"
    assert (headers["x-original-topic"], headers["x-original-partition"],
            headers["x-original-offset"], headers["x-original-size"]) == (
        CHANNEL, "0", "0", str(len(bad)),
    )  # fmt: skip
    assert kafka.dead(CHANNEL) == []  # <channel>.dead, the default, is not used


def test_consumer_lag_per_partition_in_health_and_metrics(kafka: Kafka, client, transactional_db):
    for n in range(3):
        kafka.publish(CHANNEL, body(n), f"m-{n}")

    with external(kafka.url):
        transport = transports.get()
        behind = [Lag(CHANNEL, "busapp", 0, 3), NO_LAG[1]]
        assert transport.lag(consumed()) == behind
        report = client.get("/health/").json()
        [family] = ConsumerLagCollector().collect()
        take(kafka, 3)
        after = client.get("/health/").json()

    assert report["status"] == "ok"
    assert report["consumer_lag"] == [lag._asdict() for lag in behind]
    assert {
        (s.labels["channel"], s.labels["group"], s.labels["partition"]): s.value
        for s in family.samples
    } == {(CHANNEL, "busapp", "0"): 3, ("change_batch_quantity", "allocation", "0"): 0}
    assert after["consumer_lag"] == [lag._asdict() for lag in NO_LAG]
    assert amounts() == [0, 1, 2]


def test_health_is_degraded_while_the_broker_does_not_say_the_lag(kafka: Kafka, client, db):
    kafka.proxy.cut(refuse=True)
    with external(kafka.url):
        report = client.get("/health/").json()
    kafka.proxy.mend()
    assert report["status"] == "degraded"
    assert report["consumer_lag"] is None
    assert report["reasons"] == ["the broker does not say how far the consumers are behind"]


def test_a_publish_with_no_broker_in_reach_fails_as_an_outage_and_the_next_goes_out(
    kafka: Kafka, db
):
    with external(kafka.url):
        transport = transports.get()
        transport.publish(CHANNEL, Envelope.of(Sent(n=1)))
        kafka.proxy.cut(refuse=True)
        with pytest.raises(Unreachable) as lost:
            transport.publish(CHANNEL, Envelope.of(Sent(n=2)))
        assert is_outage(lost.value)
        kafka.proxy.mend()

        def published() -> bool:
            try:
                transport.publish(CHANNEL, Envelope.of(Sent(n=3)))
            except Unreachable:
                return False
            return True

        wait_for(published, timeout=30)
    bodies = [data for data, _ in kafka.messages(CHANNEL)]
    assert bodies[0] == b'{"n":1}' and bodies[-1] == b'{"n":3}'


def test_threads_publishing_at_once_share_the_producer_each_waiting_for_its_own(kafka: Kafka, db):
    envelopes = [Envelope.of(Sent(n=n)) for n in range(200)]
    failures: list[BaseException] = []
    with external(kafka.url):
        transport = transports.get()

        def publish(mine: list[Envelope]) -> None:
            try:
                for envelope in mine:
                    transport.publish(CHANNEL, envelope)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=publish, args=(envelopes[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert failures == []
    kept = sorted(headers["message_id"] for _, headers in kafka.messages(CHANNEL))
    assert kept == sorted(str(envelope.id) for envelope in envelopes)
