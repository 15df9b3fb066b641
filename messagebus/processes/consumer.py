"""The loop behind ``manage.py messagebus consume``: inbound messages, until stopped."""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, close_old_connections

from .. import external
from ..exceptions import ConfigurationError
from ..external import inbox, transports
from ..external.failures import is_outage
from ..external.transports import Inbound, Settled
from ..observe import logs
from .process import Process

logger = logs.get_logger(__name__)


class Consumer(Process):
    """Take in every declared channel's messages through the EXTERNAL_URL's transport.

    ``limit``: stop after that many messages (or more: the last batch is taken
    whole). ``stop()`` (SIGTERM, SIGINT) lets the messages in hand finish, then
    stops.
    A broker or a database that goes away is waited out (``Process.wait_out``):
    a line per try, the waits doubling up to BACKOFF_MAX, and back to the
    shortest once a batch of messages went through. It beats from a thread of
    its own, since it waits in the broker's client between messages. A message
    that fails for any other reason is its own fault: the inbox sets it aside
    and the consumer goes on at once.
    """

    role = "consumer"

    def __init__(self, using: str = DEFAULT_DB_ALIAS, *, limit: int | None = None) -> None:
        super().__init__(using)
        self.limit = limit
        self.received = 0

    def stop(self, *args: object) -> None:
        logger.info("%s stopping after the message in hand", self.name)
        self.stopping.set()

    def run(self) -> int:
        """Consume until stopped; the number of messages received."""
        transport = transports.get()
        if transport is None:
            raise ConfigurationError(
                "MESSAGEBUS['EXTERNAL_URL'] (or MESSAGEBUS_EXTERNAL_URL) is not set: "
                "there is no broker to consume from"
            )
        if not external.subscriptions:
            raise ConfigurationError("No installed app takes in messages (messagebus.consumes)")
        channels = external.consumed()
        try:
            with self.beating(lambda: self.received):
                while not self.stopping.is_set():
                    try:
                        transport.consume(channels, self._receive, self.stopping)
                    except Exception as exc:
                        if not is_outage(exc):
                            raise
                        self.wait_out(exc, "the broker or the database", lost=True)
                    else:
                        self.reached("the broker and the database")
        finally:
            self.stopped()
        logger.info("%s stopped after %d messages", self.name, self.received)
        return self.received

    def _receive(self, messages: list[Inbound]) -> list[Settled]:
        close_old_connections()
        verdicts = inbox.receive_batch(messages, using=self.using)
        self.reached("the broker and the database")
        self.received += len(messages)
        if self.limit is not None and self.received >= self.limit:
            self.stopping.set()
        return verdicts
