"""One trace from the request to every handler: the request's span (Django's
instrumentation), the command's, the event stored, and each delivery run later by a
worker, all linked as parent and child, through the trace context kept in the outbox."""

import json
import threading
import uuid

import pytest
from django.conf import settings
from django.test import override_settings
from kombu import Connection, Producer
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from rest_framework.test import APIClient

import messagebus
from allocation.commands import Allocate, CreateBatch
from messagebus.consumer import Consumer
from messagebus.external import consumed
from messagebus.models import StoredEvent
from messagebus.transports import amqp
from messagebus.worker import Worker
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Opened
from tests.conftest import BROKER_URL, needs_rabbitmq
from tests.e2e.allocation.conftest import WRITE_PERMISSIONS
from tests.factories import UserFactory

EXPORTER = InMemorySpanExporter()
TRACED = {**settings.MESSAGEBUS, "EXECUTOR": "worker", "TRACING": True}


@pytest.fixture(scope="session")
def provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once a process: it stays for the tests after
    return provider


@pytest.fixture
def spans(provider):
    DjangoInstrumentor().instrument()
    EXPORTER.clear()
    try:
        yield EXPORTER
    finally:
        DjangoInstrumentor().uninstrument()


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS=TRACED)
def test_a_request_and_every_delivery_it_caused_are_one_trace(spans):
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    api = APIClient()
    api.force_authenticate(UserFactory(permissions=WRITE_PERMISSIONS))
    spans.clear()

    response = api.post("/api/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 2})
    assert response.status_code == 201, response.content
    stored = StoredEvent.objects.get(type="allocation.Allocated")
    assert stored.trace_context["traceparent"]
    worker = threading.Thread(target=Worker(once=True).run)  # a worker, later, elsewhere
    worker.start()
    worker.join(30)

    found = spans.get_finished_spans()
    [request] = [s for s in found if s.kind is SpanKind.SERVER]
    [command] = [s for s in found if s.name == "command allocation.Allocate"]
    [store] = [s for s in found if s.name == "store allocation.Allocated"]
    deliveries = [s for s in found if s.name == "deliver allocation.Allocated"]
    assert {s.context.trace_id for s in [request, command, store, *deliveries]} == {
        request.context.trace_id
    }
    assert command.parent.span_id == request.context.span_id
    assert store.parent.span_id == command.context.span_id
    assert command.attributes["messagebus.handler"] == "allocation.handlers.allocate"
    assert {s.attributes["messagebus.handler"] for s in deliveries} == {
        "allocation.handlers.add_allocation_to_read_model",
        "publish:line_allocated",
    }
    for delivery in deliveries:
        assert delivery.parent.span_id == store.context.span_id
        assert delivery.kind is SpanKind.CONSUMER
        assert delivery.attributes["messagebus.message.id"] == str(stored.id)
        assert delivery.attributes["messagebus.correlation_id"] == str(stored.correlation_id)
        assert delivery.attributes["messagebus.run"] == 1
        assert delivery.attributes["messagebus.outcome"] == "done"


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "RETRY_ATTEMPTS": 2, "MAX_DELIVERIES": 1})
def test_a_failed_run_shows_its_failed_calls_and_how_it_ended(spans, messagebus_registry):
    def welcome(event: Opened) -> None:
        raise ConnectionError("mail server down")

    messagebus_registry.register(None, welcome)
    messagebus.bus.handle(OpenAccount("ann"))
    Worker(once=True).run()

    # The first call in the worker's batch, then the rest of the run on its own.
    runs = [s for s in spans.get_finished_spans() if s.name == "deliver busapp.Opened"]
    assert [s.attributes.get("messagebus.outcome") for s in runs] == [None, "dead"]
    assert all(s.status.status_code.name == "ERROR" for s in runs)
    assert [e.name for s in runs for e in s.events] == ["exception", "exception"]  # 2 calls


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "TRACING": False})
def test_with_tracing_off_nothing_is_recorded_or_stored(spans):
    messagebus.bus.handle(OpenAccount("ann"))

    assert spans.get_finished_spans() == ()
    assert StoredEvent.objects.get().trace_context is None


@needs_rabbitmq
@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "EXTERNAL_URL": BROKER_URL})
def test_a_message_sent_to_rabbitmq_carries_the_trace(spans, rabbitmq_queue):
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    messagebus.bus.handle(Allocate("o1", "LAMP", 2))
    Worker(once=True).run()
    message = rabbitmq_queue.get(no_ack=True)

    found = spans.get_finished_spans()
    [publish] = [s for s in found if s.name == "publish line_allocated"]
    [delivery] = [
        s for s in found if s.attributes.get("messagebus.handler") == "publish:line_allocated"
    ]
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent.span_id == delivery.context.span_id
    sent = propagate.extract(message.headers)
    assert trace.get_current_span(sent).get_span_context().span_id == publish.context.span_id


@needs_rabbitmq
@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "EXTERNAL_URL": BROKER_URL})
def test_a_message_taken_in_from_rabbitmq_continues_its_senders_trace(spans):
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    with Connection(BROKER_URL) as connection:
        channel = connection.default_channel
        for name, app in consumed().items():  # nothing old in what the consumer reads
            amqp.inbound_queue(name, app)(channel).declare()
            amqp.inbound_queue(name, app)(channel).purge()
        headers: dict[str, str] = {}
        with trace.get_tracer("another service").start_as_current_span("send") as sender:
            propagate.inject(headers)
        Producer(channel, exchange=amqp.EXCHANGE).publish(
            json.dumps({"batchref": "b1", "qty": 7}), routing_key="change_batch_quantity",
            declare=[amqp.EXCHANGE], content_type="application/json", headers=headers,
            message_id=str(uuid.uuid4()),
        )  # fmt: skip
    spans.clear()

    assert Consumer(limit=1).run() == 1

    found = spans.get_finished_spans()
    [consume] = [s for s in found if s.name == "consume change_batch_quantity"]
    [command] = [s for s in found if s.name == "command allocation.ChangeBatchQuantity"]
    assert consume.kind is SpanKind.CONSUMER
    assert consume.context.trace_id == sender.get_span_context().trace_id
    assert consume.parent.span_id == sender.get_span_context().span_id
    assert command.parent.span_id == consume.context.span_id
