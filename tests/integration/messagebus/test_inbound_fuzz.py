"""The inbound path, fuzzed: arbitrary bytes, arbitrary JSON and boundary values, through
the inbox and through a running consumer on the real RabbitMQ, Redis (pub/sub and
Streams) and NATS JetStream.

The property: the consumer never exits; every message ends handled, or dead with a
reason; and a valid message behind any number of bad ones is handled exactly once.
Bounded: about 20 s in all (FUZZ_EXAMPLES: examples a test, more to look harder).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from django.db import connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer

import messagebus
from allocation.commands import CreateBatch
from messagebus.external import consumed
from messagebus.external.inbox import receive_batch
from messagebus.external.transports import Verdict, amqp
from messagebus.models import InboxMessage
from messagebus.processes.consumer import Consumer
from tests.brokers import external, needs_redis
from tests.busapp.models import Entry
from tests.conftest import BROKER_URL, REDIS_URL, needs_rabbitmq

logger = logging.getLogger(__name__)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
CHANNELS = ["change_batch_quantity", "busapp_record"]
markers = itertools.count(1)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
boundary_numbers = st.sampled_from([
    0, -1, 1, 999_999, 1_000_000, 1_000_001, 5_000_000, 2**31, -(2**31) - 1, 2**63, 10**29,
    1e29, -0.0, 0.5, float("inf"), True, False, None, "5", "", [], {},
])  # fmt: skip
boundary_refs = st.sampled_from(
    ["b1", "", ".", "..", "b\x00", "b\ud800", "x" * 256, "a b", "b/1", 7, None, ["b1"]]
)
boundary_bodies = st.one_of(
    st.fixed_dictionaries({"batchref": boundary_refs, "qty": boundary_numbers}),
    st.fixed_dictionaries({"n": boundary_numbers}),
).map(lambda body: json.dumps(body).encode())
nested = st.sampled_from([99, 100, 101, 5_000]).flatmap(
    lambda depth: st.sampled_from([b"[" * depth + b"]" * depth, b'{"n":' + b"[" * depth])
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.sampled_from(["batchref", "qty", "n"]), json_values, max_size=3).map(
        lambda value: json.dumps(value, ensure_ascii=False).encode()
    ),
    boundary_bodies,
    nested,
)
bad_messages = st.lists(st.tuples(st.sampled_from(CHANNELS), bodies), max_size=8)


def valid(marker: int) -> bytes:
    """A message no generated one can be mistaken for: its amount is the marker's."""
    return json.dumps({"n": -1_000_000_000 - marker}).encode()


def handled_once(marker: int) -> int:
    return Entry.objects.filter(amount=-1_000_000_000 - marker).count()


def valid_entries():
    """The entries of valid messages: their amounts, not a generated one's (-(2**31) - 1
    is below -1,000,000,000 too, and fits SQLite's column)."""
    return Entry.objects.filter(amount__lte=-1_000_000_000, amount__gt=-1_001_000_000)


def wait_until(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


fuzzed = settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing example is reported
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
def batch(transactional_db):
    with external(None):
        messagebus.bus.handle(CreateBatch("b1", "RETRO-LAMP", 10))


def test_the_inbox_settles_every_message_and_handles_the_valid_one_once(batch):
    ran = itertools.count()

    @fuzzed
    @given(bad=bad_messages)
    def check(bad: list[tuple[str, bytes]]) -> None:
        next(ran)
        marker = next(markers)
        messages = [(channel, body, f"fz-{uuid.uuid4()}", None) for channel, body in bad]
        messages.append(("busapp_record", valid(marker), None, None))

        settled = receive_batch(messages)

        assert settled[-1].verdict is Verdict.ACK
        assert handled_once(marker) == 1
        for (_, _, message_id, _), outcome in zip(messages[:-1], settled, strict=False):
            row = InboxMessage.objects.get(message_id=message_id)
            if outcome.verdict is Verdict.DEAD:
                assert row.status == "skipped" and row.reason == outcome.reason != ""
            else:
                assert row.status == "handled"

    check()
    logger.warning("Inbox fuzz: %d examples", next(ran))


@contextmanager
def consuming(url: str) -> Iterator[Consumer]:
    """A consumer on ``url`` in a thread of this process; it must still run at the end."""
    with external(url):
        consumer = Consumer()

        def run() -> None:
            try:
                consumer.run()
            finally:
                connections.close_all()  # this thread's: the test database is dropped after

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        time.sleep(0.5)  # subscribed
        try:
            yield consumer
            assert thread.is_alive(), "the consumer exited"
        finally:  # a failed check must not leave it consuming the next test's messages
            consumer.stop()
            thread.join(10)
    assert consumer.failures == 0  # no message was taken for an outage


@needs_rabbitmq
def test_a_consumer_on_rabbitmq_settles_every_message_and_never_stops(batch):
    ran = itertools.count()
    with Connection(BROKER_URL) as connection:
        channel = connection.default_channel
        for name, app in consumed().items():
            queue = amqp.inbound_queue(name, app)(channel)
            queue.declare()
            queue.purge()
        producer = Producer(channel, exchange=amqp.exchange())

        def publish(name: str, body: bytes, message_id: str | None) -> None:
            ids = {"message_id": message_id} if message_id else {}
            producer.publish(
                body, routing_key=name, declare=[amqp.exchange()],
                content_type="application/json", content_encoding="utf-8", **ids,
            )  # fmt: skip

        with consuming(BROKER_URL):

            @fuzzed
            @given(bad=bad_messages)
            def check(bad: list[tuple[str, bytes]]) -> None:
                next(ran)
                marker = next(markers)
                ids = [f"fz-{uuid.uuid4()}" for _ in bad]
                for (name, body), message_id in zip(bad, ids, strict=True):
                    publish(name, body, message_id)
                publish("busapp_record", valid(marker), None)  # and one without an id

                wait_until(lambda: handled_once(marker) >= 1)
                rows = InboxMessage.objects.filter(message_id__in=ids)
                wait_until(lambda: rows.count() == len(ids))  # the other queues' too
                for status, reason in rows.values_list("status", "reason"):
                    assert status == "handled" or (status == "skipped" and reason)

            check()
        amqp.DEAD_QUEUE(channel).purge()
    time.sleep(0.2)
    assert set(valid_entries().values_list("amount", flat=True))
    assert not any(count > 1 for count in _counts(valid_entries())), (
        "a valid message was handled twice"
    )
    logger.warning("RabbitMQ fuzz: %d examples", next(ran))


@needs_redis
def test_a_consumer_on_redis_settles_every_message_and_never_stops(batch):
    ran = itertools.count()
    client = redis.Redis.from_url(REDIS_URL)
    with consuming(REDIS_URL):

        @fuzzed
        @given(bad=bad_messages)
        def check(bad: list[tuple[str, bytes]]) -> None:
            next(ran)
            marker = next(markers)
            before = InboxMessage.objects.count()
            for name, body in bad:
                client.publish(name, body)
            client.publish("busapp_record", valid(marker))

            wait_until(lambda: handled_once(marker) >= 1)
            wait_until(lambda: InboxMessage.objects.count() >= before + len(bad) + 1)
            assert handled_once(marker) == 1
            assert InboxMessage.objects.count() == before + len(bad) + 1  # each once
            assert not InboxMessage.objects.filter(status="skipped", reason="").exists()

        check()
    logger.warning("Redis fuzz: %d examples", next(ran))


def _counts(entries) -> list[int]:
    amounts = list(entries.values_list("amount", flat=True))
    return [amounts.count(amount) for amount in set(amounts)]


def test_a_consumer_on_a_durable_broker_settles_every_message_and_never_stops(batch, durable):
    ran = itertools.count()
    with consuming(durable.url):

        @fuzzed
        @given(bad=bad_messages)
        def check(bad: list[tuple[str, bytes]]) -> None:
            next(ran)
            marker = next(markers)
            ids = [f"fz-{uuid.uuid4()}" for _ in bad]
            for (name, body), message_id in zip(bad, ids, strict=True):
                durable.publish(name, body, message_id)
            durable.publish("busapp_record", valid(marker), None)  # and one without an id

            wait_until(lambda: handled_once(marker) >= 1)
            rows = InboxMessage.objects.filter(message_id__in=ids)
            wait_until(lambda: rows.count() == len(ids))  # the other channel's too
            for status, reason in rows.values_list("status", "reason"):
                assert status == "handled" or (status == "skipped" and reason)

        check()
    wait_until(lambda: all(durable.waiting(name, app) == 0 for name, app in consumed().items()))
    assert not any(count > 1 for count in _counts(valid_entries())), (
        "a valid message was handled twice"
    )
    logger.warning("%s fuzz: %d examples", durable.name, next(ran))
