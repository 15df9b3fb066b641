"""Redis pub/sub, as the book's services use it: plain channel names, JSON bodies.

With ``MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents"`` a message is instead a whole
CloudEvent (structured content mode, ``cloudevents.REDIS``), whose id is the inbox's key.

Pub/sub carries a body and nothing else, so the body is the event's fields,
exactly what the book's clients read; the message id, type and correlation
id stay in the outbox (and in this process's log), not on the wire. Coming
in, a message has no id, and pub/sub never delivers one twice: each is taken
as new. Pub/sub keeps nothing for a subscriber that is away, and has no
acknowledgement: what is published while no consumer listens is lost, as in
the book. ``publish_many`` sends its ``PUBLISH`` commands in one pipeline (one round
trip).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

import redis

from ...core.envelope import Envelope
from ..cloudevents import REDIS
from . import BATCH, Inbound, Published, Receive, body, received

logger = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds to connect, or to wait for an answer


class RedisTransport:
    connection_errors = (redis.ConnectionError, redis.TimeoutError)

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )

    def publish(self, channel: str, envelope: Envelope) -> None:
        self.client.publish(channel, body(envelope, REDIS))

    def publish_many(self, channel: str, envelopes: Sequence[Envelope]) -> Published:
        """A ``PUBLISH`` of each, in one pipeline: None for each Redis took, the error it
        answered for each other. A connection that fails meanwhile raises (one of
        ``connection_errors``): then none is known published, though some may have been."""
        pipe = self.client.pipeline(transaction=False)
        for envelope in envelopes:
            pipe.publish(channel, body(envelope, REDIS))
        return executed(pipe)

    def consume(
        self, channels: Mapping[str, str], receive: Receive, stopping: threading.Event
    ) -> None:
        pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(*channels)
            confirmed = 0
            while confirmed < len(channels):  # subscribed: nothing published from now is missed
                reply = pubsub.get_message(timeout=TIMEOUT)
                if reply is None:
                    raise redis.TimeoutError("no answer to SUBSCRIBE")
                confirmed += reply["type"] == "subscribe"
            logger.info("Consuming %s from Redis", ", ".join(channels))
            while not stopping.is_set():
                at_hand: list[Inbound] = []
                wait = 0.5  # for the first; the others only if already here
                while len(at_hand) < BATCH:
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    if message is None:
                        break
                    if message["type"] == "message":
                        channel = message["channel"].decode()
                        at_hand.append(received(channel, message["data"], {}, REDIS, None))
                        wait = 0.0
                if at_hand:
                    receive(at_hand)  # pub/sub has nothing to acknowledge
        finally:
            pubsub.close()


def executed(pipe: redis.client.Pipeline) -> Published:
    """Run ``pipe``'s commands (not in a MULTI): None for each Redis carried out, the
    error it answered for each other."""
    answers = pipe.execute(raise_on_error=False)
    return [answer if isinstance(answer, Exception) else None for answer in answers]
