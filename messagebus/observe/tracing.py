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

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .. import compat, conf
from ..core.messages import Message, message_type_name
from ..exceptions import CommandRejected
from . import logs

try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
except ImportError:  # the extra is not installed: no traces
    trace = None  # type: ignore[assignment]

_QUIET = (ProxyTracerProvider, trace.NoOpTracerProvider) if trace else ()
_last: tuple[Any, Any] = (None, None)  # the provider last asked, and its tracer (None: quiet)
_NAMED = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ  # a provider to load when first asked


def _tracer() -> Any:
    """The tracer to make spans with; None when none are recorded: the API not installed,
    no provider set, or the setting off.

    Asked on every message: with no provider set, ``get_tracer_provider()`` reads the
    environment each time, so the API's own global is looked at first, and the
    environment only if it named a provider when this module was imported (one that
    ``get_tracer_provider()`` loads the first time it is asked).
    """
    global _last
    if trace is None:
        return None
    if compat.tracer_provider_unset(trace) and not _NAMED:
        return None
    provider = trace.get_tracer_provider()
    if _last[0] is not provider:
        quiet = isinstance(provider, _QUIET)
        _last = (provider, None if quiet else provider.get_tracer("messagebus"))
    return _last[1] if conf.settings.TRACING else None


# logs.of()'s fields, as span attributes.
_ATTRIBUTES = {
    "message_type": "messagebus.message.type",
    "message_id": "messagebus.message.id",
    "correlation_id": "messagebus.correlation_id",
    "handler": "messagebus.handler",
}


def _about(message: Message, handler: str | None = None) -> dict[str, Any]:
    return {_ATTRIBUTES[key]: value for key, value in logs.of(message, handler).items()}


class _Current:
    """A span, current inside the ``with`` block and ended at its end; an error escaping
    the block is recorded on it. What ``start_as_current_span`` does, at half the cost:
    one is entered for every message."""

    __slots__ = ("held", "span", "token")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.held = False

    def hold(self) -> None:
        """Leave the span open at the end of this block: it goes on in another."""
        self.held = True

    def close(self) -> None:
        """End a span held open that does not go on after all."""
        if self.held:
            self.held = False
            self.span.end()

    def __enter__(self) -> Any:
        self.held = False
        self.token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        context.detach(self.token)
        if isinstance(error, Exception) and self.span.is_recording():
            self.span.record_exception(error)
            if not isinstance(error, CommandRejected):  # an answer, not a fault
                self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        if not self.held:
            self.span.end()


class _Command(_Current):
    """A command's span, with how it ended: ``ok``, ``rejected`` or ``failed``, as its
    metric counts it (none when it was cancelled or interrupted)."""

    __slots__ = ()

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if self.span.is_recording() and (error is None or isinstance(error, Exception)):
            outcome = (
                "ok" if error is None
                else "rejected" if isinstance(error, CommandRejected)
                else "failed"
            )  # fmt: skip
            self.span.set_attribute("messagebus.outcome", outcome)
        super().__exit__(kind, error, tb)


class _Off:
    """What a span's ``with`` block is entered with when none is recorded."""

    __slots__ = ()

    def hold(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        return None


Span = _Current | _Off
_off = _Off()


class Carried(dict[str, str]):
    """The trace context an event was stored in, as kept with it (W3C ``traceparent``),
    and, in the process that stored it, as the context itself: read back without parsing."""

    context: Any = None


def _handled(verb: str, message: Message, handler: str, kind: type[_Current]) -> Span:
    """The span ``<verb> <message type>`` of a message handled here, by ``handler``."""
    tracer = _tracer()
    if tracer is None:
        return _off
    name = f"{verb} {message_type_name(type(message))}"
    return kind(tracer.start_span(name, attributes=_about(message, handler)))


def command(message: Message, handler: str) -> Span:
    """The span of a command handled (a no-op context manager when tracing is off)."""
    return _handled("command", message, handler, _Command)


def query(message: Message, handler: str) -> Span:
    """The span of a query answered (a no-op context manager when tracing is off)."""
    return _handled("query", message, handler, _Current)


def in_transaction(event: Message, handler: str) -> Span:
    """The span of an event handled inside the transaction that recorded it: a child of
    whatever runs that transaction (a command, a delivery)."""
    return _handled("handle", event, handler, _Current)


def stored(message: Message) -> Carried | None:
    """Record the span of an event stored; the trace context to keep with it (None: off)."""
    tracer = _tracer()
    if tracer is None:
        return None
    name = f"store {message_type_name(type(message))}"
    span = tracer.start_span(name, attributes=_about(message))
    carrier = Carried()
    carrier.context = trace.set_span_in_context(span)
    propagate.inject(carrier, context=carrier.context)
    span.end()
    return carrier or None


def delivery(
    message: Message, handler: str, carried: Mapping[str, str] | None, run: int | None = None
) -> Span:
    """The span of a delivery's call, child of the span its event was stored in
    (``carried``: that trace context, as kept with the event; ``run``: the number of the
    run the call belongs to, when known)."""
    tracer = _tracer()
    if tracer is None:
        return _off
    attributes = _about(message, handler)
    if run is not None:
        attributes["messagebus.run"] = run
    # Parsed from the outbox's copy only in another process than the one that stored it.
    parent = (getattr(carried, "context", None) or propagate.extract(carried)) if carried else None
    name = f"deliver {message_type_name(type(message))}"
    return _Current(tracer.start_span(name, parent, SpanKind.CONSUMER, attributes=attributes))


def ended(outcome: str) -> None:
    """Record how the current delivery's call ended: done, retry, rescheduled, postponed
    or dead."""
    if _tracer() is not None:
        _outcome(trace.get_current_span(), outcome)


def finish(span: Span, outcome: str) -> None:
    """End a delivery's span held open past its block (a batch's, until its commit or
    rollback), recording how its call ended."""
    if isinstance(span, _Current) and span.held:
        _outcome(span.span, outcome)
        span.close()


def _outcome(span: Any, outcome: str) -> None:
    if span.is_recording():
        span.set_attribute("messagebus.outcome", outcome)
        if outcome != "done":
            span.set_status(Status(StatusCode.ERROR, outcome))


def failed(error: BaseException) -> None:
    """Record a failed call of the current delivery's handler (an event on its span)."""
    if _tracer() is not None:
        trace.get_current_span().record_exception(error)


def published(channel: str, headers: dict[str, Any]) -> Any:
    """The span of a message sent to a broker; its context goes into ``headers``."""
    tracer = _tracer()
    if tracer is None:
        return _off
    return _hop(tracer, "publish", channel, SpanKind.PRODUCER, None, headers)


def consumed(channel: str, headers: Mapping[str, Any] | None) -> Any:
    """The span of a message taken in from a broker, continuing the sender's trace."""
    tracer = _tracer()
    if tracer is None:
        return _off
    return _hop(tracer, "consume", channel, SpanKind.CONSUMER, headers, None)


@contextmanager
def _hop(
    tracer: Any,
    verb: str,
    channel: str,
    kind: Any,
    carried: Mapping[str, Any] | None,
    carrier: dict[str, Any] | None,
) -> Iterator[Any]:
    parent = propagate.extract(dict(carried)) if carried else None
    attributes = {"messaging.destination.name": channel, "messaging.operation.type": verb}
    with _Current(tracer.start_span(f"{verb} {channel}", parent, kind, attributes)) as span:
        if carrier is not None:
            propagate.inject(carrier)
        yield span
