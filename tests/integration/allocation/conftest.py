from collections.abc import Callable

import pytest


class FakeNotifications:
    """The ``notifications`` dependency, keeping what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, destination: str, message: str) -> None:
        self.sent.append((destination, message))


@pytest.fixture
def notifications(messagebus_dependencies: Callable[..., None]) -> FakeNotifications:
    """What the event handlers send in this test, instead of emails."""
    fake = FakeNotifications()
    messagebus_dependencies(notifications=fake)
    return fake
