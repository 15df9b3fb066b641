"""Redis Streams, NATS JetStream and Kafka, on real servers: what they keep that pub/sub
loses. Each test runs on each (the ``durable`` fixture); one project plays both
services: it publishes ``Sent`` on busapp_record from its outbox, and takes
busapp_record in (a ``Record`` command, an ``Entry`` row) in a consumer subprocess."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings

import messagebus
from messagebus.core.envelope import Envelope
from messagebus.exceptions import ConfigurationError
from messagebus.external import consumed, inbox, transports
from messagebus.external.transports import ACKED, ORDERING_KEY, Inbound, Settled
from messagebus.models import Delivery, InboxMessage
from messagebus.processes.worker import Worker
from tests.brokers import external, wait_for
from tests.busapp.events import Sent, Sequenced
from tests.busapp.models import Entry
from tests.durable import Broker

CHANNEL = "busapp_record"


class Crashed(Exception):
    """The consumer died after its transaction committed, before the broker heard of it."""


def store_sent(count: int, start: int = 0) -> list[Sent]:
    """``count`` Sent events stored in the outbox, their publishing not run yet."""
    events = [Sent(n=n) for n in range(start, start + count)]
    stored_only = override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"})
    with stored_only, messagebus.UnitOfWork() as uow:
        for event in events:
            uow.publish(event)
    return events


def relay(url: str, **more: object) -> None:
    """Publish every due delivery, as `messagebus worker` does, until none is left."""
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": url, **more}):
        Worker(once=True).run()


def amounts() -> list[int]:
    return sorted(Entry.objects.filter(account="record").values_list("amount", flat=True))


def body(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


@contextmanager
def entries_locked() -> Iterator[None]:
    """No other connection writes the busapp's entries until the block ends (on SQLite,
    nothing at all: BEGIN IMMEDIATE takes the one write lock; on MariaDB, a table lock
    of the connection's, until UNLOCK TABLES)."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("LOCK TABLE busapp_entry IN EXCLUSIVE MODE")
        elif connection.vendor == "mysql":
            cursor.execute("LOCK TABLES busapp_entry WRITE")
        else:
            cursor.execute("DELETE FROM busapp_entry WHERE id = -1")
        try:
            yield
        finally:
            if connection.vendor == "mysql":
                cursor.execute("UNLOCK TABLES")


def test_a_round_trip_to_a_second_service_handles_each_message_once(durable: Broker, consumer):
    events = store_sent(20)
    relay(durable.url)
    assert set(Delivery.objects.filter(handler=f"publish:{CHANNEL}").values_list("status",
               flat=True)) == {"done"}  # fmt: skip
    assert durable.kept(CHANNEL) == 20  # kept while no one listens

    process = consumer(durable.url, durable.env)

    wait_for(lambda: durable.waiting(CHANNEL) == 0 and len(amounts()) >= 20,
             output=lambda: process.output)  # fmt: skip
    assert amounts() == list(range(20))
    assert set(InboxMessage.objects.values_list("message_id", flat=True)) == {
        str(event.message_id) for event in events
    }
    assert process.output.count("Handled message") == 20
    assert "cannot reach" not in process.output  # a channel with nothing is no outage


def test_the_broker_dropped_mid_relay_loses_nothing(durable: Broker, consumer):
    proxy, through_proxy = durable.proxied()
    store_sent(200)
    proxy.cut_after(20_000, mend_after=durable.outage)  # some 50 messages in: answer lost

    relay(through_proxy, REDELIVERY_DELAY=0, MAX_DELIVERIES=1000)

    publishing = Delivery.objects.filter(handler=f"publish:{CHANNEL}")
    assert set(publishing.values_list("status", flat=True)) == {"done"}
    assert publishing.filter(attempts__gt=1).exists()  # some failed, and went again
    assert durable.kept(CHANNEL) >= 200  # copies of one whose answer was lost: the inbox's

    process = consumer(durable.url, durable.env)

    wait_for(lambda: durable.waiting(CHANNEL) == 0 and len(amounts()) >= 200, timeout=30,
             output=lambda: process.output)  # fmt: skip
    assert amounts() == list(range(200))


def test_a_consumer_killed_mid_batch_handles_nothing_twice(durable: Broker, consumer):
    for n in range(50):
        durable.publish(CHANNEL, body(n), f"m-{n}")
    first = consumer(durable.url, durable.env)
    wait_for(lambda: len(amounts()) == 50, output=lambda: first.output)

    with entries_locked():  # its next batch cannot commit: it is killed in the middle
        for n in range(50, 100):
            durable.publish(CHANNEL, body(n), f"m-{n}")
        wait_for(lambda: durable.pending(CHANNEL) > 0, output=lambda: first.output)
        first.kill()
    assert durable.pending(CHANNEL) > 0  # read, never acknowledged
    assert len(amounts()) == 50

    second = consumer(durable.url, durable.env)  # takes them over, once their wait is up

    wait_for(lambda: len(amounts()) >= 100 and durable.waiting(CHANNEL) == 0, timeout=30,
             output=lambda: second.output)  # fmt: skip
    assert amounts() == list(range(100))
    assert InboxMessage.objects.filter(status="handled").count() == 100


def test_undecodable_bytes_and_poison_are_dead_lettered_and_the_consumer_goes_on(
    durable: Broker, consumer
):
    huge = b'{"n": 1, "pad": "' + b"x" * 5000 + b'"}'
    bad = {
        "garbage": b"\xff\xfe\x00\x9c not json", "list": b"[1]", "five": b'{"n": "five"}',
        "deep": b"[" * 150 + b"]" * 150, "huge": huge, "empty": b"",
    }  # fmt: skip
    for message_id, data in bad.items():
        durable.publish(CHANNEL, data, message_id)
    durable.publish(CHANNEL, body(7), "good")
    process = consumer(durable.url, {**durable.env, "MESSAGEBUS_INBOUND_MAX_BYTES": "2000"})

    wait_for(lambda: Entry.objects.filter(amount=7).exists(), output=lambda: process.output)
    wait_for(lambda: len(durable.dead(CHANNEL)) >= len(bad), output=lambda: process.output)
    reasons = dict(
        InboxMessage.objects.filter(status="skipped").values_list("message_id", "reason")
    )
    assert set(reasons) == set(bad)
    assert reasons["garbage"].startswith("not JSON: ")  # a BOM: read as UTF-16, and fails
    assert "codec can't decode" in reasons["garbage"]
    assert reasons["list"] == "not a JSON object but list"
    assert reasons["deep"] == "not JSON: nested more than 100 deep"
    assert reasons["huge"].startswith(f"too large: {len(huge)} bytes")
    letters = durable.dead(CHANNEL)
    assert sorted(fields["x-reason"] for _, fields in letters) == sorted(reasons.values())
    [(kept, fields)] = [letter for letter in letters if letter[1]["x-reason"] == reasons["huge"]]
    assert kept == huge[:2000] and fields["x-original-size"] == str(len(huge))
    assert durable.waiting(CHANNEL) == 0  # settled, every one: nothing is delivered again
    time.sleep(3)  # past NATS_ACK_WAIT and REDIS_STREAM_CLAIM_IDLE
    assert process.output.count("Skipped message") == len(bad)
    assert process.process.poll() is None, process.output


def test_an_entry_without_a_body_is_dead_lettered_with_the_reason(redis_streams, consumer):
    redis_streams.client.xadd(CHANNEL, {"qty": 5, "batchref": "b1"})
    redis_streams.publish(CHANNEL, body(7), "good")
    process = consumer(redis_streams.url, redis_streams.env)

    wait_for(lambda: Entry.objects.filter(amount=7).exists(), output=lambda: process.output)
    wait_for(lambda: redis_streams.dead(CHANNEL) != [], output=lambda: process.output)
    [(_, fields)] = redis_streams.dead(CHANNEL)
    assert fields["x-reason"] == "no 'body' field, but 'batchref', 'qty'"
    assert fields["x-group"] == "busapp" and fields["qty"] == "5"
    assert redis_streams.waiting(CHANNEL) == 0
    assert "Skipped entry" in process.output


def test_the_message_id_travels_and_a_copy_delivered_again_is_dropped_by_the_inbox(
    durable: Broker, transactional_db, caplog
):
    [event] = store_sent(1)
    relay(durable.url)
    [(_, headers)] = durable.messages(CHANNEL)
    assert (headers["type"], headers["correlation_id"]) == (
        "busapp.Sent", str(event.correlation_id),
    )  # fmt: skip
    seen: list[Inbound] = []

    def crash_after_commit(messages: list[Inbound]) -> list[Settled]:
        seen.extend(messages)
        inbox.receive_batch(messages)
        raise Crashed

    stopping = threading.Event()
    settled: list[Settled] = []

    def receive(messages: list[Inbound]) -> list[Settled]:
        settled.extend(inbox.receive_batch(messages))
        seen.extend(messages)
        stopping.set()
        return settled

    with external(durable.url):
        transport = transports.get()
        assert transport is not None
        with pytest.raises(Crashed):
            transport.consume({CHANNEL: "busapp"}, crash_after_commit, stopping)
        assert durable.waiting(CHANNEL) == 1  # to be delivered again
        with caplog.at_level(logging.INFO, logger="messagebus"):
            transport.consume({CHANNEL: "busapp"}, receive, stopping)

    assert [message_id for _, _, message_id, _ in seen] == [str(event.message_id)] * 2
    assert settled == [ACKED]
    assert f"Duplicate message {event.message_id} on {CHANNEL}: handled before" in caplog.text
    assert amounts() == [event.n]
    wait_for(lambda: durable.waiting(CHANNEL) == 0)


def test_a_message_published_twice_is_handled_once(durable: Broker, transactional_db):
    """The outbox publishes again when the broker's answer was lost: NATS drops the copy
    (Nats-Msg-Id, within its duplicate window), Redis and Kafka keep it and the inbox
    drops it."""
    envelope = Envelope.of(Sent(n=5))
    with external(durable.url):
        transport = transports.get()
        assert transport is not None
        transport.publish(CHANNEL, envelope)
        transport.publish(CHANNEL, envelope)
        assert durable.kept(CHANNEL) == {"redis+stream": 2, "nats": 1, "kafka": 2}[durable.name]
        stopping = threading.Event()

        def receive(messages: list[Inbound]) -> list[Settled]:
            outcome = inbox.receive_batch(messages)
            if durable.waiting(CHANNEL) <= len(messages):
                stopping.set()
            return outcome

        transport.consume({CHANNEL: "busapp"}, receive, stopping)
    assert amounts() == [5]
    assert list(InboxMessage.objects.values_list("message_id", flat=True)) == [str(envelope.id)]


def test_a_backlog_is_taken_in_batch_after_batch_with_no_outage(durable: Broker, transactional_db):
    for n in range(2000):
        durable.publish(CHANNEL, body(n), f"m-{n}")
    stopping = threading.Event()
    batches: list[int] = []

    def receive(messages: list[Inbound]) -> list[Settled]:
        batches.append(len(messages))
        if sum(batches) >= 2000:
            stopping.set()
        return inbox.receive_batch(messages)

    with external(durable.url):
        transport = transports.get()
        assert transport is not None
        # busapp_record and change_batch_quantity, on which nothing comes: raises nothing
        transport.consume(consumed(), receive, stopping)

    assert sum(batches) == 2000 and max(batches) <= 100
    assert amounts() == list(range(2000))
    wait_for(lambda: durable.waiting(CHANNEL) == 0)


def test_a_publish_from_sync_code_called_inside_async_code_goes_out(durable: Broker, db):
    with external(durable.url):
        transport = transports.get()
        assert transport is not None

        async def inside() -> None:  # an event loop runs in this thread meanwhile
            transport.publish(CHANNEL, Envelope.of(Sent(n=1)))

        asyncio.run(inside())
        transport.publish(CHANNEL, Envelope.of(Sent(n=2)))
    assert [data for data, _ in durable.messages(CHANNEL)] == [b'{"n":1}', b'{"n":2}']


def test_an_ordered_message_carries_its_ordering_key_in_a_header(durable: Broker, db):
    with external(durable.url):
        transport = transports.get()
        assert transport is not None
        transport.publish(CHANNEL, Envelope.of(Sequenced(key="k7", n=1)))
        transport.publish(CHANNEL, Envelope.of(Sent(n=2)))
    (_, ordered), (_, unordered) = durable.messages(CHANNEL)
    assert ordered[ORDERING_KEY] == "k7"
    assert ORDERING_KEY not in unordered


def test_the_consumer_waits_out_a_broker_that_goes_away(durable: Broker, consumer):
    proxy, through_proxy = durable.proxied()
    process = consumer(through_proxy, durable.env)

    proxy.cut(refuse=True)
    wait_for(lambda: "(failure 2, next try in 2s)" in process.output, timeout=30,
             output=lambda: process.output)  # fmt: skip
    proxy.mend()
    wait_for(lambda: process.output.count("Consuming ") >= 2, output=lambda: process.output)
    durable.publish(CHANNEL, body(7), "after")
    wait_for(lambda: Entry.objects.filter(amount=7).exists(), output=lambda: process.output)

    assert "Traceback" not in process.output
    failures = [line for line in process.output.splitlines() if "cannot reach" in line]
    assert 2 <= len(failures) <= 5  # one line a try, the waits doubling


def test_with_the_stream_required_and_missing_nats_says_what_to_do(jetstream):
    required = {**settings.MESSAGEBUS, "EXTERNAL_URL": jetstream.url, "NATS_CREATE_STREAM": False}
    with override_settings(MESSAGEBUS=required):
        transport = transports.get()
        assert transport is not None
        missing = f"No JetStream stream takes '{jetstream.prefix}.>'"
        with pytest.raises(ConfigurationError, match=missing):
            transport.publish(CHANNEL, Envelope.of(Sent(n=1)))
    assert jetstream.kept(CHANNEL) == 0
