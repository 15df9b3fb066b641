"""One trace from the request to every handler: the request's span (Django's
instrumentation), the command's, the event stored, and each delivery run later by a
worker, all linked as parent and child, through the trace context kept in the outbox."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.db import DatabaseError
from django.test import override_settings
from kombu import Connection, Producer
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from rest_framework.test import APIClient

import messagebus
from allocation.commands import Allocate, CreateBatch
from allocation.exceptions import InvalidSku
from config import celery_app
from messagebus.delivery import run
from messagebus.external import consumed
from messagebus.external.transports import amqp
from messagebus.models import StoredEvent
from messagebus.outbox import states
from messagebus.processes.consumer import Consumer
from messagebus.processes.worker import Worker
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Opened
from tests.conftest import BROKER_URL, ROOT, celery_on_postgres, needs_rabbitmq
from tests.e2e.allocation.conftest import WRITE_PERMISSIONS
from tests.factories import UserFactory
from tests.subprocesses import CeleryWorker

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


def allocate_through_the_api(spans) -> None:
    """A batch, then (its spans alone recorded) one ``POST /api/allocations``."""
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    api = APIClient()
    api.force_authenticate(UserFactory(permissions=WRITE_PERMISSIONS))
    spans.clear()
    response = api.post("/api/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 2})
    assert response.status_code == 201, response.content


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS=TRACED)
def test_a_request_and_every_delivery_it_caused_are_one_trace(spans):
    allocate_through_the_api(spans)

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
    assert {s.attributes["messagebus.handler"] for s in deliveries} == {"publish:line_allocated"}
    [read_model] = [s for s in found if s.name == "handle allocation.Allocated"]  # in its
    assert read_model.parent.span_id == command.context.span_id  # command's transaction
    assert read_model.attributes["messagebus.handler"] == (
        "allocation.handlers.add_allocation_to_read_model"
    )
    for delivery in deliveries:
        assert delivery.parent.span_id == store.context.span_id
        assert delivery.kind is SpanKind.CONSUMER
        assert delivery.attributes["messagebus.message.id"] == str(stored.id)
        assert delivery.attributes["messagebus.correlation_id"] == str(stored.correlation_id)
        assert delivery.attributes["messagebus.run"] == 1
        assert delivery.attributes["messagebus.outcome"] == "done"


@celery_on_postgres
@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "EXECUTOR": "celery"})
def test_deliveries_a_celery_worker_runs_are_in_the_requests_trace(spans, tmp_path):
    traces = tmp_path / "spans.jsonl"
    celery_app.control.purge()
    worker = CeleryWorker("traced", "--include", "tests.traced", BUSAPP_TRACES_FILE=str(traces))
    celery = CeleryInstrumentor()
    celery.instrument()  # here too: the task sent is a span, and its context goes with it
    try:
        allocate_through_the_api(spans)

        def theirs() -> list[dict]:
            written = traces.read_text() if traces.exists() else ""
            whole = written[: written.rfind("\n") + 1]  # not a line still being written
            return [json.loads(line) for line in whole.splitlines()]

        def delivered() -> list[dict]:
            return [s for s in theirs() if s["name"] == "deliver allocation.Allocated"]

        deadline = time.monotonic() + 30
        while not delivered():  # publish:line_allocated's (the read model's is in the request)
            assert time.monotonic() < deadline, f"the worker's spans: {theirs()}"
            time.sleep(0.05)
    finally:
        celery.uninstrument()
        worker.stop()

    found = spans.get_finished_spans()
    [request] = [s for s in found if s.kind is SpanKind.SERVER]
    [store] = [s for s in found if s.name == "store allocation.Allocated"]
    sent = [s for s in found if s.name.startswith("apply_async/")]
    ran = [s for s in theirs() if s["name"].startswith("run/")]
    one_trace = f"0x{request.context.trace_id:032x}"
    assert sent and ran  # Celery's own spans, here and there
    assert {s["context"]["trace_id"] for s in [*ran, *delivered()]} == {one_trace}
    assert {s.context.trace_id for s in sent} == {request.context.trace_id}
    assert [s["attributes"]["messagebus.handler"] for s in delivered()] == [
        "publish:line_allocated"
    ]
    [read_model] = [s for s in found if s.name == "handle allocation.Allocated"]  # in its
    assert read_model.context.trace_id == request.context.trace_id  # command's transaction
    assert read_model.attributes["messagebus.handler"] == (
        "allocation.handlers.add_allocation_to_read_model"
    )
    for delivery in delivered():
        assert delivery["parent_id"] == f"0x{store.context.span_id:016x}"
        assert delivery["kind"] == "SpanKind.CONSUMER"
        assert delivery["attributes"]["messagebus.outcome"] == "done"


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "RETRY_ATTEMPTS": 2, "MAX_DELIVERIES": 1})
def test_each_failed_call_is_a_span_saying_how_it_ended(spans, messagebus_registry):
    def welcome(event: Opened) -> None:
        raise ConnectionError("mail server down")

    messagebus_registry.register(None, welcome)
    messagebus.bus.handle(OpenAccount("ann"))
    Worker(once=True).run()

    # Its run: a call in the worker's batch, due again at once (RETRY_WAIT 0), the last
    # call on its own.
    calls = [s for s in spans.get_finished_spans() if s.name == "deliver busapp.Opened"]
    assert [c.attributes["messagebus.outcome"] for c in calls] == ["retry", "dead"]
    for call in calls:
        assert call.attributes["messagebus.run"] == 1
        assert call.status.status_code.name == "ERROR"
        assert [e.name for e in call.events] == ["exception"]
        assert call.events[0].attributes["exception.message"] == "mail server down"


def failing(registry, *names: str) -> None:
    for name in names:

        def fail(event: Opened) -> None:
            raise ConnectionError("mail server down")

        registry.register(None, fail, name=name)


def database_down(*args: object, **kwargs: object) -> None:
    raise DatabaseError("the database went away")


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "RETRY_ATTEMPTS": 2})
def test_a_failure_in_a_batch_that_cannot_be_recorded_still_ends_its_span(
    spans, messagebus_registry, monkeypatch
):
    failing(messagebus_registry, "welcome")
    messagebus.bus.handle(OpenAccount("ann"))
    monkeypatch.setattr(run.states, "failed", database_down)

    with pytest.raises(DatabaseError):
        run.deliver(states.claim("default", 10), seconds=1)

    [call] = [s for s in spans.get_finished_spans() if s.name == "deliver busapp.Opened"]
    assert [e.attributes["exception.message"] for e in call.events] == [
        "mail server down",
        "the database went away",
    ]


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "RETRY_ATTEMPTS": 2})
def test_the_calls_a_failure_rolls_back_in_a_batch_say_so_and_run_again(spans, messagebus_registry):
    greeted = []
    messagebus_registry.register(Opened, greeted.append, name="greet")
    failing(messagebus_registry, "welcome")
    messagebus.bus.handle(OpenAccount("ann"))

    run.deliver(states.claim("default", 10), seconds=1)

    calls = [s for s in spans.get_finished_spans() if s.name == "deliver busapp.Opened"]
    outcomes = [
        (c.attributes["messagebus.handler"], c.attributes["messagebus.outcome"]) for c in calls
    ]
    assert outcomes == [("greet", "rolled back"), ("welcome", "retry"), ("greet", "done")]
    assert len(greeted) == 2
    assert StoredEvent.objects.get().deliveries.get(handler="greet").status == "done"


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS={**TRACED, "EXECUTOR": "inline"})
def test_inline_deliveries_are_children_of_the_event_stored(spans, messagebus_registry):
    welcomed = []
    messagebus_registry.register(Opened, welcomed.append, name="welcome")
    messagebus_registry.register(Opened, lambda event: None, name="count")
    messagebus.bus.handle(OpenAccount("ann"))

    found = spans.get_finished_spans()
    [command] = [s for s in found if s.name == "command busapp.OpenAccount"]
    [store] = [s for s in found if s.name == "store busapp.Opened"]
    deliveries = [s for s in found if s.name == "deliver busapp.Opened"]
    assert len(deliveries) == 2 and len(welcomed) == 1
    assert store.parent.span_id == command.context.span_id
    for delivery in deliveries:
        assert delivery.parent.span_id == store.context.span_id
        assert delivery.context.trace_id == command.context.trace_id
        assert delivery.attributes["messagebus.outcome"] == "done"
    kept = StoredEvent.objects.get(type="busapp.Opened").trace_context  # for other processes
    parent = trace.get_current_span(propagate.extract(kept)).get_span_context()
    assert (parent.trace_id, parent.span_id) == (store.context.trace_id, store.context.span_id)


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS=TRACED)
def test_a_commands_span_says_how_it_ended_and_a_fault_is_an_error(spans, messagebus_registry):
    messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
    with pytest.raises(InvalidSku):
        messagebus.bus.handle(Allocate("o1", "NOSUCHSKU", 1))

    def broken(cmd: Allocate) -> None:
        raise RuntimeError("disk on fire")

    messagebus_registry.unregister(messagebus_registry.command_handler(Allocate).func)
    messagebus_registry.register(Allocate, broken)
    with pytest.raises(RuntimeError):
        messagebus.bus.handle(Allocate("o2", "LAMP", 1))

    found = spans.get_finished_spans()
    [created] = [s for s in found if s.name == "command allocation.CreateBatch"]
    rejected, failed = [s for s in found if s.name == "command allocation.Allocate"]
    assert created.attributes["messagebus.outcome"] == "ok"
    assert created.status.status_code.name == "UNSET"
    assert rejected.attributes["messagebus.outcome"] == "rejected"  # an answer, not a fault
    assert rejected.status.status_code.name == "UNSET"
    assert rejected.events[0].attributes["exception.type"].endswith("InvalidSku")
    assert failed.attributes["messagebus.outcome"] == "failed"
    assert failed.status.status_code.name == "ERROR"
    assert failed.status.description == "RuntimeError: disk on fire"


@pytest.mark.django_db(transaction=True)
@override_settings(MESSAGEBUS=TRACED)
def test_a_read_is_a_query_span_in_the_requests_trace(spans):
    allocate_through_the_api(spans)
    api = APIClient()
    api.force_authenticate(UserFactory(permissions=WRITE_PERMISSIONS))
    spans.clear()

    response = api.get("/api/allocations/o1")

    assert response.status_code == 200, response.content
    found = spans.get_finished_spans()
    [request] = [s for s in found if s.kind is SpanKind.SERVER]
    [query] = [s for s in found if s.name == "query allocation.GetAllocations"]
    assert query.parent.span_id == request.context.span_id
    assert query.attributes["messagebus.handler"] == "allocation.queries.allocations"
    assert not [s for s in found if s.name.startswith(("command ", "store "))]


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
        Producer(channel, exchange=amqp.exchange()).publish(
            json.dumps({"batchref": "b1", "qty": 7}), routing_key="change_batch_quantity",
            declare=[amqp.exchange()], content_type="application/json", headers=headers,
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


STORE_ONE = """
import django

django.setup()
from django.test.utils import setup_databases, teardown_databases

import messagebus
from messagebus.models import StoredEvent
from tests.busapp.commands import OpenAccount

config = setup_databases(verbosity=0, interactive=False)
try:
    messagebus.bus.handle(OpenAccount("ann"))
    print(StoredEvent.objects.get().trace_context)
finally:
    teardown_databases(config, verbosity=0)
"""


@pytest.mark.parametrize("named", [True, False], ids=["named", "none"])
def test_a_provider_named_only_in_the_environment_is_used(named, tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'env.sqlite3'}",
        "BUSAPP_TRACES_FILE": str(tmp_path / "unused.jsonl"),  # tracing on
    }
    env.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    if named:
        env["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"  # the SDK's
    done = subprocess.run(
        [sys.executable, "-c", STORE_ONE], env=env, cwd=ROOT, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    kept = done.stdout.strip()
    assert kept.startswith("{'traceparent': '00-") if named else kept == "None"
