"""``transports.publish_all``: a transport's ``publish_many`` where it has one, else its
``publish`` for each message, each one's outcome in its place."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from messagebus.core.envelope import Envelope
from messagebus.external import transports
from messagebus.external.transports import Published
from tests.busapp.events import Sent


class Refused(Exception):
    """What the broker said of one message."""


class Lost(ConnectionError):
    """What the transport raises when its broker is out of reach."""


class OneAtATime:
    """A transport with ``publish`` only: refuses the ``n`` listed in ``refuse``, loses its
    connection at ``lose`` (if given)."""

    connection_errors = (Lost,)

    def __init__(self, refuse: frozenset[int] = frozenset(), lose: int | None = None) -> None:
        self.refuse, self.lose = refuse, lose
        self.tried: list[int] = []

    def publish(self, channel: str, envelope: Envelope) -> None:
        n = envelope.payload["n"]
        self.tried.append(n)
        if n == self.lose:
            raise Lost("the broker went away")
        if n in self.refuse:
            raise Refused(f"no {n}")

    def consume(self, channels, receive, stopping) -> None:
        raise NotImplementedError


class Together(OneAtATime):
    """A transport with ``publish_many`` too."""

    def publish_many(self, channel: str, envelopes: Sequence[Envelope]) -> Published:
        return [Refused("all at once") for _ in envelopes]


def envelopes(count: int) -> list[Envelope]:
    return [Envelope.of(Sent(n=n)) for n in range(count)]


def test_a_transport_without_publish_many_publishes_each_and_a_refusal_stays_in_its_place():
    transport = OneAtATime(refuse=frozenset({1, 3}))
    published = transports.publish_all(transport, "c", envelopes(5))
    assert [type(outcome) for outcome in published] == [
        type(None), Refused, type(None), Refused, type(None),
    ]  # fmt: skip
    assert str(published[1]) == "no 1" and transport.tried == [0, 1, 2, 3, 4]


def test_once_the_connection_is_lost_the_rest_are_not_tried_and_none_is_confirmed():
    transport = OneAtATime(lose=2)
    published = transports.publish_all(transport, "c", envelopes(5))
    assert published[:2] == [None, None]
    assert all(isinstance(outcome, Lost) for outcome in published[2:])
    assert transport.tried == [0, 1, 2]


def test_a_transport_with_publish_many_is_given_them_all_at_once():
    transport = Together()
    published = transports.publish_all(transport, "c", envelopes(3))
    assert [str(outcome) for outcome in published] == ["all at once"] * 3
    assert transport.tried == []


@pytest.mark.parametrize("kind", [OneAtATime, Together])
def test_nothing_to_publish_publishes_nothing(kind):
    assert transports.publish_all(kind(), "c", []) == []
