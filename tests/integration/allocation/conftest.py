from collections.abc import Callable, Iterator
from typing import Any

import pytest

import messagebus


class FakeNotifications:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, destination: str, message: str) -> None:
        self.sent.append((destination, message))


@pytest.fixture
def notifications() -> Iterator[FakeNotifications]:
    fake = FakeNotifications()
    with messagebus.dependencies.override(notifications=fake):
        yield fake


@pytest.fixture
def after_commit(django_capture_on_commit_callbacks: Any) -> Callable[[], Any]:
    """``with after_commit():`` runs the event handlers the block's commits would run."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def handle(
    db: None, after_commit: Callable[[], Any], notifications: FakeNotifications
) -> Callable[[messagebus.Message], Any]:
    """``bus.handle``, then the event handlers its commit would run."""

    def handle(message: messagebus.Message) -> Any:
        with after_commit():
            return messagebus.bus.handle(message)

    return handle
