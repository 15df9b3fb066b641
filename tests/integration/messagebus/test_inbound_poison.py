"""One crafted message never stops, jams or slips past the consumer: on the real
RabbitMQ and Redis, each is dead-lettered with the reason and the next one is handled."""

from __future__ import annotations

import json

import pytest
import redis

import messagebus
from allocation.commands import CreateBatch
from allocation.models import Batch
from messagebus.models import InboxMessage
from tests.brokers import external, needs_redis, wait_for
from tests.busapp.models import Entry
from tests.conftest import BROKER_URL, REDIS_URL, needs_rabbitmq
from tests.proxy import Proxy

VALID = json.dumps({"batchref": "b1", "qty": 7})
MIB = 1024 * 1024


@pytest.fixture
def batch(transactional_db):
    with external(None):
        messagebus.bus.handle(CreateBatch("b1", "RETRO-LAMP", 10))


def dead_letters(rabbitmq, count: int) -> list:
    found: list = []
    wait_for(
        lambda: (
            found.extend(m for m in iter(lambda: rabbitmq.dead.get(no_ack=True), None))
            or len(found) >= count
        )
    )
    return found


def handled() -> bool:
    return InboxMessage.objects.filter(status="handled").exists()


def reasons() -> dict[str, str]:
    """The inbox's skipped rows: message id -> reason."""
    return dict(InboxMessage.objects.filter(status="skipped").values_list("message_id", "reason"))


@needs_rabbitmq
def test_json_nested_200_000_deep_is_dead_lettered_and_the_next_message_handled(
    batch, consumer, rabbitmq
):
    process = consumer(BROKER_URL)
    rabbitmq.publish(b"[" * 200_000, "deep")
    rabbitmq.publish(VALID)

    wait_for(handled, output=lambda: process.output)
    assert Batch.objects.get(reference="b1").purchased_quantity == 7
    [dead] = dead_letters(rabbitmq, 1)
    assert dead.headers["x-reason"] == "not JSON: nested more than 100 deep"
    assert dead.properties["message_id"] == "deep"
    assert reasons() == {"deep": "not JSON: nested more than 100 deep"}
    assert process.process.poll() is None, process.output
    assert "RecursionError" not in process.output


@needs_rabbitmq
def test_a_value_the_database_refuses_is_dead_lettered_at_once_and_the_batch_goes_on(
    consumer, rabbitmq
):
    # busapp_record's command writes an integer column: 10**29 does not fit (PostgreSQL:
    # DataError, integer out of range); published together, they are taken in one batch.
    rabbitmq.publish(json.dumps({"n": 1}), channel="busapp_record", with_id=False)
    rabbitmq.publish(json.dumps({"n": 10**29}), "too-big", channel="busapp_record")
    rabbitmq.publish(json.dumps({"n": 2}), channel="busapp_record")
    process = consumer(BROKER_URL)

    wait_for(lambda: Entry.objects.filter(amount=2).exists(), output=lambda: process.output)
    [dead] = dead_letters(rabbitmq, 1)
    assert dead.properties["message_id"] == "too-big"
    assert dead.headers["x-reason"].startswith("Record failed: ")
    assert reasons()["too-big"] == dead.headers["x-reason"]
    assert sorted(Entry.objects.values_list("amount", flat=True)) == [1, 2]  # once each
    assert "cannot reach" not in process.output  # not taken for an outage
    assert process.process.poll() is None


@needs_rabbitmq
def test_a_message_over_the_size_limit_is_dead_lettered_with_its_size_never_decoded(
    batch, consumer, rabbitmq
):
    large = b'{"batchref": "b1", "qty": 3, "pad": "' + b"x" * (2 * MIB) + b'"}'
    process = consumer(BROKER_URL)
    rabbitmq.publish(large, "large")
    rabbitmq.publish(VALID)

    wait_for(handled, output=lambda: process.output)
    assert Batch.objects.get(reference="b1").purchased_quantity == 7
    [dead] = dead_letters(rabbitmq, 1)
    reason = f"too large: {len(large)} bytes, over MESSAGEBUS['INBOUND_MAX_BYTES'] ({MIB})"
    assert dead.headers["x-reason"] == reason
    assert dead.headers["x-original-size"] == len(large)
    assert dead.body == large[:MIB]
    row = InboxMessage.objects.get(message_id="large")
    assert (row.status, row.reason) == ("skipped", reason)
    assert row.body == large[:1024].decode()


@needs_rabbitmq
def test_the_waits_between_tries_start_again_after_a_message_went_through(
    batch, consumer, rabbitmq
):
    proxy, through_proxy = Proxy.to(BROKER_URL)
    process = consumer(through_proxy)

    proxy.cut(refuse=True)
    wait_for(lambda: "(failure 2, next try in 2s)" in process.output, output=lambda: process.output)
    proxy.mend()
    wait_for(lambda: process.output.count("Consuming ") == 2, output=lambda: process.output)
    rabbitmq.publish(VALID)
    wait_for(handled)
    proxy.cut(refuse=True)

    wait_for(lambda: process.output.count("(failure 1, next try in 1s)") == 2, timeout=15,
             output=lambda: process.output)  # fmt: skip
    assert "(failure 3," not in process.output


@needs_redis
def test_on_redis_what_would_stop_the_consumer_is_kept_in_the_inbox_and_the_next_handled(
    batch, consumer
):
    process = consumer(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL)
    client.publish("change_batch_quantity", b"[" * 200_000)
    client.publish("change_batch_quantity", b'{"batchref": "b\x00", "qty": 3}')  # a raw NUL
    client.publish("change_batch_quantity", b'{"pad": "' + b"x" * (2 * MIB) + b'"}')
    client.publish("change_batch_quantity", VALID)

    wait_for(handled, output=lambda: process.output)
    assert Batch.objects.get(reference="b1").purchased_quantity == 7
    kept = sorted(InboxMessage.objects.filter(status="skipped").values_list("reason", "body"))
    assert [reason.split(":")[0] for reason, _ in kept] == ["not JSON", "not JSON", "too large"]
    assert {"nested more than 100 deep" in reason for reason, _ in kept} == {True, False}
    bodies = {reason.split(":")[0]: body for reason, body in kept}
    assert len(bodies["too large"]) == 1024  # its first bytes, not all of it
    assert '"b\N{REPLACEMENT CHARACTER}"' in "".join(body for _, body in kept)
    assert process.process.poll() is None


@needs_rabbitmq
def test_quantities_and_references_the_commands_rules_refuse_are_dead_lettered(
    batch, consumer, rabbitmq
):
    process = consumer(BROKER_URL)
    refused = {
        "negative": ('{"batchref": "b1", "qty": -1}', "qty: -1 is not between 1 and 1000000"),
        "zero": ('{"batchref": "b1", "qty": 0}', "qty: 0 is not between 1 and 1000000"),
        "over": ('{"batchref": "b1", "qty": 5000000}', "qty: 5000000 is not between 1 and 1000000"),
        "huge": ('{"batchref": "b1", "qty": 1e29}', "qty: 1e+29 is not a whole number"),
        "nul": ('{"batchref": "b1\\u0000", "qty": 3}', "ref: 'b1\\x00': Use only letters"),
    }
    for message_id, (body, _) in refused.items():
        rabbitmq.publish(body, message_id)
    rabbitmq.publish(VALID)

    wait_for(handled, output=lambda: process.output)
    assert Batch.objects.get(reference="b1").purchased_quantity == 7
    dead = {m.properties["message_id"]: m.headers["x-reason"] for m in dead_letters(rabbitmq, 5)}
    assert set(dead) == set(refused)
    for message_id, (_, reason) in refused.items():
        assert reason in dead[message_id], dead[message_id]
        assert dead[message_id].startswith("allocation.external.change_batch_quantity: Invalid ")
    assert reasons() == dead
