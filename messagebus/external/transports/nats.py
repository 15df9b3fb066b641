"""NATS JetStream (``nats://host:port``) through nats-py: a subject per channel,
``<MESSAGEBUS["NATS_PREFIX"]>.<channel>``, in one stream that takes ``<prefix>.>``.

The stream is looked up by its subjects when the transport connects; if none takes
them it is created (``NATS_PREFIX`` upper-cased, dots as underscores, with the
server's defaults), or, with ``MESSAGEBUS["NATS_CREATE_STREAM"] = False``, a
``ConfigurationError`` says that one must be made. Publishing waits for the stream's
acknowledgement; the message id travels as ``Nats-Msg-Id``, so the server drops a copy
published again within its duplicate window (an outbox delivery retried after an
acknowledgement was lost), and ``type``, ``correlation_id``, ``causation_id`` and the
W3C trace context as headers. ``publish_many`` sends them all at once and waits for
each one's acknowledgement.

Coming in, each channel has a durable pull consumer, ``<app label>_<channel>`` (dots
as underscores), created if missing with explicit acks and ``NATS_ACK_WAIT``. A
batch is acknowledged once the inbox recorded it; one that met an outage is ``nak``-ed
with ``NATS_NAK_DELAY``; a dead message is copied to ``<prefix>.dead.<channel>`` with
the reason (header ``x-reason``) and terminated (``term``), so it is never delivered
again; one never acknowledged (its consumer died) is delivered again after the ack
wait.

nats-py is asyncio, the transport's callers are threads (a worker's, the consumer's):
each thread that calls it gets an event loop and a connection of its own, made on its
first call (again in a forked child), and runs that loop for the length of each call
(``run_until_complete``), so a publish costs no hand-over between threads. Between
calls nothing runs on that connection: it is not reconnected in the background, and
one lost, or unused for ``IDLE`` seconds, is replaced on the next call. ``close()``
(``transports.reset()``, and at exit) closes every thread's connection and loop.

With ``MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents"`` the headers but ``Nats-Msg-Id``
are a CloudEvent's attributes instead, ``ce-<name>``, percent-encoded (binary content
mode, ``cloudevents.NATS``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from ... import conf
from ...core.envelope import Envelope
from ...exceptions import ConfigurationError
from ..cloudevents import NATS
from . import BATCH, Inbound, Published, Receive, Settled, Verdict, body, headers, received

logger = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT = 5.0  # seconds to connect, or to wait for an answer
WAIT = 0.5  # seconds a fetch waits for the first message
MESSAGE_ID = "Nats-Msg-Id"
# Seconds a thread's connection may sit unused (its loop not running: no answer to the
# server's pings) before the next call replaces it rather than trust it.
IDLE = 60.0
HEADROOM = 4096  # bytes of a dead letter's payload left for its headers
Message = tuple[bytes, dict[str, str]]  # a payload and its headers
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


def stream_name(prefix: str) -> str:
    """The stream created for ``prefix``'s subjects."""
    return prefix.replace(".", "_").upper()


def durable_name(app: str, channel: str) -> str:
    """The durable consumer through which ``app`` takes in ``channel``."""
    return f"{app}_{channel}".replace(".", "_")


def dead_subject(prefix: str, channel: str) -> str:
    return f"{prefix}.dead.{channel}"


@dataclass
class _Here:
    """One thread's event loop and connection (made in this process: a forked child makes
    its own), and the streams found on it."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    pid: int = field(default_factory=os.getpid)
    connection: Client | None = None
    jetstream: JetStreamContext | None = None
    streams: dict[str, str] = field(default_factory=dict)  # prefix -> its stream
    used: float = 0.0  # when a call last ran the loop (time.monotonic)


class NatsTransport:
    connection_errors = CONNECTION_ERRORS

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[_Here] = []  # every thread's, for close()
        self._aside: ThreadPoolExecutor | None = None
        atexit.register(self.close)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on this thread's loop, until it is done (each step of it has
        its own timeout); from a thread whose own loop is running (sync code called
        inside async code), on the transport's one thread set aside for that."""
        with contextlib.suppress(RuntimeError):  # raised where no loop runs: the usual case
            asyncio.get_running_loop()
            with self._lock:
                if self._aside is None:
                    self._aside = ThreadPoolExecutor(1, thread_name_prefix="messagebus-nats")
            return self._aside.submit(self._run, coroutine).result()
        here: _Here | None = getattr(self._local, "here", None)
        if here is None or here.pid != os.getpid():
            here = self._local.here = _Here()
            with self._lock:
                self._opened.append(here)
        try:
            return here.loop.run_until_complete(coroutine)
        finally:
            here.used = time.monotonic()

    def close(self) -> None:
        """Close every thread's connection and loop (but one running a call just now, in
        another thread); the next call makes them anew."""
        with self._lock:
            opened, self._opened = self._opened, []
            self._local = threading.local()
            aside, self._aside = self._aside, None
        if aside is not None:
            aside.shutdown()  # its call over, its loop is closed below with the others
        for here in opened:
            if here.pid != os.getpid() or here.loop.is_running() or here.loop.is_closed():
                continue
            if here.connection is not None and not here.connection.is_closed:
                with contextlib.suppress(Exception):
                    here.loop.run_until_complete(here.connection.close())
            here.loop.close()

    async def _connected(self, prefix: str) -> tuple[Client, JetStreamContext, str]:
        """This thread's connection, its JetStream context and the stream of ``prefix``'s
        subjects (found, or made). A connection lost, or left idle long enough that the
        server may have given up on it, is replaced by a new one."""
        here: _Here = self._local.here
        connection, jetstream = here.connection, here.jetstream
        idle = time.monotonic() - here.used > IDLE
        if connection is None or jetstream is None or not connection.is_connected or idle:
            if connection is not None and not connection.is_closed:
                with contextlib.suppress(Exception):
                    await connection.close()
            here.connection = None
            try:
                connection = here.connection = await nats.connect(
                    self.url, name="messagebus", connect_timeout=int(TIMEOUT),
                    allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=1.0,
                    error_cb=_error,
                )  # fmt: skip
            except nats.errors.AuthorizationError:
                raise
            except nats.errors.Error as exc:  # a server that closed at once, or said nothing
                raise nats.errors.NoServersError from exc
            jetstream = here.jetstream = connection.jetstream(timeout=TIMEOUT)
            here.streams = {}
        if prefix not in here.streams:
            here.streams[prefix] = await _stream(jetstream, prefix)
        return connection, jetstream, here.streams[prefix]

    def publish(self, channel: str, envelope: Envelope) -> None:
        payload, found = message(envelope)
        self._run(self._publish(conf.settings.NATS_PREFIX, channel, payload, found))

    async def _publish(
        self, prefix: str, channel: str, payload: bytes, found: dict[str, str]
    ) -> None:
        _, jetstream, stream = await self._connected(prefix)
        acked = await jetstream.publish(
            f"{prefix}.{channel}", payload, timeout=TIMEOUT, stream=stream, headers=found
        )
        _acked(acked, found, channel)

    def publish_many(self, channel: str, envelopes: Sequence[Envelope]) -> Published:
        """Send every envelope at once, then wait for the stream's acknowledgement of each
        (up to TIMEOUT seconds): None for each acknowledged (or known already: a copy),
        the error for each other (``nats.js.errors.APIError``: the stream refused it,
        larger than its ``max_msg_size`` say; ``nats.errors.TimeoutError``: no answer,
        the connection lost say). Raises one of ``connection_errors`` when the server
        cannot be reached, and ``ConfigurationError`` as ``publish`` does."""
        messages = [message(envelope) for envelope in envelopes]
        published: Published = self._run(
            self._publish_many(conf.settings.NATS_PREFIX, channel, messages)
        )
        return published

    async def _publish_many(self, prefix: str, channel: str, messages: list[Message]) -> Published:
        # A publish each, side by side: nats-py's publish_async leaves the acknowledgement
        # of a message the stream refused unanswered (its reply handler raises the error).
        _, jetstream, stream = await self._connected(prefix)
        subject = f"{prefix}.{channel}"
        answers = await asyncio.gather(
            *(
                jetstream.publish(subject, payload, timeout=TIMEOUT, stream=stream, headers=found)
                for payload, found in messages
            ),
            return_exceptions=True,
        )
        published: Published = []
        for answer, (_, found) in zip(answers, messages, strict=True):
            if isinstance(answer, Exception):
                published.append(answer)
            elif isinstance(answer, BaseException):  # cancelled, interrupted: not an answer
                raise answer
            else:
                _acked(answer, found, channel)
                published.append(None)
        return published

    def consume(
        self, channels: Mapping[str, str], receive: Receive, stopping: threading.Event
    ) -> None:
        prefix = conf.settings.NATS_PREFIX
        pulling = self._run(self._subscribe(prefix, channels))
        logger.info(
            "Consuming %s from NATS JetStream (stream %s)",
            ", ".join(f"{prefix}.{c} ({durable_name(a, c)})" for c, a in channels.items()),
            pulling.stream,
        )  # fmt: skip
        try:
            while not stopping.is_set():
                taken = self._run(pulling.next())
                for start in range(0, len(taken), BATCH):
                    batch = taken[start : start + BATCH]
                    try:
                        settled = receive([_inbound(channel, msg) for channel, msg in batch])
                    except BaseException:
                        # Not the messages' fault: again after a while, here or elsewhere.
                        delay = conf.settings.NATS_NAK_DELAY
                        with contextlib.suppress(Exception):
                            self._run(_nak(taken[start:], delay))
                        raise
                    self._run(_settle(prefix, pulling, batch, settled))
        finally:
            with contextlib.suppress(Exception):
                self._run(pulling.stop())

    async def _subscribe(self, prefix: str, channels: Mapping[str, str]) -> _Pulling:
        connection, jetstream, stream = await self._connected(prefix)
        subscriptions = {}
        for channel, app in channels.items():
            config = api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT, ack_wait=conf.settings.NATS_ACK_WAIT,
                deliver_policy=api.DeliverPolicy.ALL,
            )  # fmt: skip
            subscriptions[channel] = await jetstream.pull_subscribe(
                f"{prefix}.{channel}", durable=durable_name(app, channel), stream=stream,
                config=config,
            )  # fmt: skip
        return _Pulling(connection, jetstream, stream, subscriptions)


class _Pulling:
    """The durable consumers of one ``consume``, each fetching into a task of its own so
    that a channel with messages never waits for one without."""

    def __init__(
        self, connection: Client, jetstream: JetStreamContext, stream: str,
        subscriptions: dict[str, Any],
    ) -> None:  # fmt: skip
        self.connection = connection
        self.jetstream = jetstream
        self.stream = stream
        self.subscriptions = subscriptions  # channel -> its PullSubscription
        self.fetching: dict[str, asyncio.Task[list[Msg]]] = {}

    async def next(self) -> list[tuple[str, Msg]]:
        """What came on any channel within WAIT seconds (or more, if it was already here)."""
        if not self.connection.is_connected:
            raise nats.errors.ConnectionClosedError
        for channel, subscription in self.subscriptions.items():
            if channel not in self.fetching:
                self.fetching[channel] = asyncio.create_task(subscription.fetch(BATCH, WAIT))
        await asyncio.wait(
            self.fetching.values(), timeout=WAIT + TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        taken: list[tuple[str, Msg]] = []
        failed: BaseException | None = None
        for channel, task in list(self.fetching.items()):
            if not task.done():
                continue
            del self.fetching[channel]
            error = task.exception()
            if error is None:
                taken += [(channel, msg) for msg in task.result()]
            elif not isinstance(error, TimeoutError):  # nothing came (nats-py says so with
                failed = error  # its own TimeoutError, or asyncio's, by the path it took)
        if failed is not None:
            await _nak(taken, 0)
            raise failed
        return taken

    async def stop(self) -> None:
        for task in self.fetching.values():
            task.cancel()
        await asyncio.gather(*self.fetching.values(), return_exceptions=True)
        for subscription in self.subscriptions.values():
            await subscription.unsubscribe()


async def _settle(
    prefix: str, pulling: _Pulling, batch: list[tuple[str, Msg]], settled: list[Settled]
) -> None:
    """Acknowledge each message, or copy it to the dead-letter subject and end it; then
    make sure the server has it all."""
    for (channel, msg), outcome in zip(batch, settled, strict=True):
        if outcome.verdict is Verdict.DEAD:
            room = pulling.connection.max_payload - HEADROOM
            await pulling.jetstream.publish(
                dead_subject(prefix, channel),
                msg.data[: min(conf.settings.INBOUND_MAX_BYTES, room)],
                timeout=TIMEOUT, headers=_dead_headers(msg, outcome.reason),
            )  # fmt: skip
            await msg.term()
        else:
            await msg.ack()
    await pulling.connection.flush(int(TIMEOUT))


def message(envelope: Envelope) -> Message:
    """What is published of ``envelope``: its payload, and its headers (its id as
    ``Nats-Msg-Id``)."""
    return body(envelope, NATS), headers(envelope, NATS, MESSAGE_ID)


def _acked(acked: api.PubAck, found: dict[str, str], channel: str) -> None:
    if acked.duplicate:
        logger.info("NATS had message %s on %s already", found[MESSAGE_ID], channel)


async def _stream(jetstream: JetStreamContext, prefix: str) -> str:
    """The stream that takes ``<prefix>.>``: found, or made unless NATS_CREATE_STREAM is off."""
    subjects = f"{prefix}.>"
    try:
        return await jetstream.find_stream_name_by_subject(subjects)
    except nats.js.errors.NotFoundError:
        if not conf.settings.NATS_CREATE_STREAM:
            raise ConfigurationError(
                f"No JetStream stream takes {subjects!r}, and MESSAGEBUS['NATS_CREATE_STREAM'] "
                "is False: create one (nats stream add), or let the bus create it"
            ) from None
    name = stream_name(prefix)
    await jetstream.add_stream(name=name, subjects=[subjects])
    logger.info("Created the JetStream stream %s for %s", name, subjects)
    return name


def _inbound(channel: str, msg: Msg) -> Inbound:
    found = msg.headers or {}
    # A message without an id is known by its place in the stream: delivered again, it
    # is known as handled.
    message_id = found.get(MESSAGE_ID) or f"{msg.metadata.stream}/{msg.metadata.sequence.stream}"
    return received(channel, msg.data, found, NATS, message_id)


def _dead_headers(msg: Msg, reason: str) -> dict[str, str]:
    """The message's headers, and why, where from and how large (one line each)."""
    kept = {key: value for key, value in (msg.headers or {}).items() if key != MESSAGE_ID}
    original = (msg.headers or {}).get(MESSAGE_ID) or str(msg.metadata.sequence.stream)
    added = {
        MESSAGE_ID: f"dead:{msg.metadata.stream}/{original}",
        "x-reason": reason,
        "x-original-subject": msg.subject,
        "x-original-size": str(len(msg.data)),
    }
    return {key: " ".join(str(value).splitlines()) for key, value in {**kept, **added}.items()}


async def _nak(taken: list[tuple[str, Msg]], delay: float) -> None:
    for _, msg in taken:
        await msg.nak(delay or None)


async def _error(exc: Exception) -> None:
    logger.warning("NATS: %s: %s", type(exc).__name__, exc)
