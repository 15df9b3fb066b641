"""A Celery worker's spans, written to the file ``BUSAPP_TRACES_FILE`` names, one JSON
object a line, for a test to read: the SDK and the Celery instrumentation set up as the
README says, in each worker process's ``worker_process_init``.

    BUSAPP_TRACES_FILE=spans.jsonl celery -A config worker --include tests.traced
"""

import os
from collections.abc import Sequence

from celery.signals import worker_process_init
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class ToFile(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as file:
            file.writelines(span.to_json(indent=None) + "\n" for span in spans)
        return SpanExportResult.SUCCESS


@worker_process_init.connect(weak=False)
def traced(**kwargs: object) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ToFile(os.environ["BUSAPP_TRACES_FILE"])))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
