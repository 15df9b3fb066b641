"""OpenTelemetry traces: a span per command, per event stored, per delivery run and per
broker hop, one trace from the request that started it all, across processes.

The trace context current when an event is stored (its ``store`` span) is kept
with it in the outbox (``StoredEvent.trace_context``, W3C ``traceparent``),
and each run of its deliveries, in whatever process, is a span whose parent
it is. Messages sent to a broker carry it in their headers (AMQP; Redis
pub/sub has none), and the consumer's span continues it.

Only the API is needed (opentelemetry-api); the SDK and exporters are the
deployer's. Until a tracer provider is set, nothing is done beyond asking
which provider is set: no span, no context stored. MESSAGEBUS["TRACING"] =
False turns it all off.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from . import conf, logs
from .messages import Message, message_type_name

if TYPE_CHECKING:
    from .delivery.runner import Task

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
except ImportError:  # the extra is not installed: no traces
    trace = None  # type: ignore[assignment]

_QUIET = (ProxyTracerProvider, trace.NoOpTracerProvider) if trace else ()
_off: Any = nullcontext()


def on() -> bool:
    """Whether spans are recorded: the API installed, a provider set, the setting on.

    Asked on every message: with no provider set, ``get_tracer_provider()`` reads the
    environment each time, so the API's own global is looked at first when it has one.
    """
    if trace is None or getattr(trace, "_TRACER_PROVIDER", True) is None:
        return False
    if isinstance(trace.get_tracer_provider(), _QUIET):
        return False
    return conf.settings.TRACING


_tracers: dict[int, Any] = {}  # by the provider's id: one tracer each, not one a span


def _tracer() -> Any:
    provider = trace.get_tracer_provider()
    tracer = _tracers.get(id(provider))
    if tracer is None:
        tracer = _tracers[id(provider)] = provider.get_tracer("messagebus")
    return tracer


# logs.of()'s fields, as span attributes.
_ATTRIBUTES = {
    "message_type": "messagebus.message.type",
    "message_id": "messagebus.message.id",
    "correlation_id": "messagebus.correlation_id",
    "handler": "messagebus.handler",
}


def _about(message: Message, handler: str | None = None) -> dict[str, Any]:
    return {_ATTRIBUTES[key]: value for key, value in logs.of(message, handler).items()}


def _span(name: str, attributes: dict[str, Any], **options: Any) -> Any:
    """A span, current inside its ``with`` block; an error escaping it is recorded."""
    return _tracer().start_as_current_span(name, attributes=attributes, **options)


def command(message: Message, handler: str) -> Any:
    """The span of a command handled (a no-op context manager when tracing is off)."""
    if not on():
        return _off
    return _span(f"command {message_type_name(type(message))}", _about(message, handler))


def stored(message: Message) -> dict[str, str] | None:
    """Record the span of an event stored; the trace context to keep with it (None: off)."""
    if not on():
        return None
    span = _tracer().start_span(
        f"store {message_type_name(type(message))}", attributes=_about(message)
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    span.end()
    return carrier or None


def delivery(task: Task, run: int | None = None) -> Any:
    """The span of a delivery's run, child of the span its event was stored in (``run``:
    its number, counting the runs that ended before it, when known)."""
    if not on():
        return _off
    message, handler, carried = task.event, task.handler.name, task.trace
    attributes: dict[str, Any] = _about(message, handler)
    if run is not None:
        attributes["messagebus.run"] = run
    parent = propagate.extract(carried) if carried else None
    return _span(
        f"deliver {message_type_name(type(message))}", attributes,
        context=parent, kind=SpanKind.CONSUMER,
    )  # fmt: skip


def ended(outcome: str) -> None:
    """Record how the current delivery run ended: done, rescheduled, postponed or dead."""
    if not on():
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("messagebus.outcome", outcome)
        if outcome != "done":
            span.set_status(Status(StatusCode.ERROR, outcome))


def failed(error: BaseException) -> None:
    """Record a failed call of the current delivery's handler (an event on its span)."""
    if on():
        trace.get_current_span().record_exception(error)


def published(channel: str, headers: dict[str, Any]) -> Any:
    """The span of a message sent to a broker; its context goes into ``headers``."""
    if not on():
        return _off
    return _hop("publish", channel, SpanKind.PRODUCER, None, headers)


def consumed(channel: str, headers: Mapping[str, Any] | None) -> Any:
    """The span of a message taken in from a broker, continuing the sender's trace."""
    if not on():
        return _off
    return _hop("consume", channel, SpanKind.CONSUMER, headers, None)


@contextmanager
def _hop(
    verb: str,
    channel: str,
    kind: Any,
    carried: Mapping[str, Any] | None,
    carrier: dict[str, Any] | None,
) -> Iterator[Any]:
    parent = propagate.extract(dict(carried)) if carried else None
    attributes = {"messaging.destination.name": channel, "messaging.operation.type": verb}
    with _span(f"{verb} {channel}", attributes, context=parent, kind=kind) as span:
        if carrier is not None:
            propagate.inject(carrier)
        yield span
