"""The loop behind ``manage.py messagebus consume``: inbound messages, until stopped."""

from __future__ import annotations

import threading

from django.db import DEFAULT_DB_ALIAS, close_old_connections

from . import external, inbox, logs, transports
from .exceptions import ConfigurationError
from .failures import is_outage
from .transports import Inbound, Settled
from .wording import first_line
from .worker import backoff

logger = logs.get_logger(__name__)


class Consumer:
    """Take in every declared channel's messages through the EXTERNAL_URL's transport.

    ``limit``: stop after that many messages (or more: the last batch is taken
    whole). ``stop()`` (SIGTERM, SIGINT) lets the messages in hand finish, then
    stops.
    A broker or a database that goes away is waited out: a line per try,
    the waits doubling up to worker.BACKOFF_MAX, and back to the shortest once
    a batch of messages went through. A message that fails for any other reason
    is its own fault: the inbox sets it aside and the consumer goes on at once.
    """

    def __init__(self, using: str = DEFAULT_DB_ALIAS, *, limit: int | None = None) -> None:
        self.using = using
        self.limit = limit
        self.received = 0
        self.failures = 0  # outages in a row
        self._stopping = threading.Event()

    def stop(self, *args: object) -> None:
        logger.info("Consumer stopping after the message in hand")
        self._stopping.set()

    def run(self) -> int:
        """Consume until stopped; the number of messages received."""
        transport = transports.get()
        if transport is None:
            raise ConfigurationError(
                "MESSAGEBUS['EXTERNAL_URL'] is not set: there is no broker to consume from"
            )
        if not external.subscriptions:
            raise ConfigurationError("No installed app takes in messages (messagebus.consumes)")
        channels = external.consumed()
        while not self._stopping.is_set():
            try:
                transport.consume(channels, self._receive, self._stopping)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self.failures += 1
                delay = backoff(self.failures)
                logger.error(
                    "Consumer cannot go on (failure %d, next try in %.0fs): %s: %s",
                    self.failures, delay, type(exc).__name__, first_line(exc),
                )  # fmt: skip
                self._stopping.wait(delay)
            else:
                self.failures = 0
        logger.info("Consumer stopped after %d messages", self.received)
        return self.received

    def _receive(self, messages: list[Inbound]) -> list[Settled]:
        close_old_connections()
        verdicts = inbox.receive_batch(messages, using=self.using)
        self.failures = 0  # the broker and the database answer again
        self.received += len(messages)
        if self.limit is not None and self.received >= self.limit:
            self._stopping.set()
        return verdicts
