"""pytest fixtures for a project's tests: ``pytest_plugins = ["messagebus.pytest_plugin"]``.

- ``messagebus_capture``: a ``Captured`` (``messagebus.testing``) that records the
  messages handed to the bus and the events published (committed) in this test;
- ``messagebus_deliver``: database access, and after-commit work (event delivery)
  run as a real commit would run it, although the test's transaction never
  commits; deliveries run inline, whatever MESSAGEBUS["EXECUTOR"] says;
- ``messagebus_registry``: the registry, restored after the test, so a test may
  register handlers of its own;
- ``messagebus_dependencies``: ``override(name=value)``, undone after the test.

Each is a context manager of ``messagebus.testing`` (which works without pytest)
made a fixture; ``messagebus_deliver`` asks for pytest-django's ``db``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from .core.dependencies import dependencies
from .core.registry import Registry, registry
from .testing import Captured, capture_messages, deliver_on_commit


@pytest.fixture
def messagebus_capture() -> Iterator[Captured]:
    with capture_messages() as captured:
        yield captured


@pytest.fixture
def messagebus_deliver(db: None) -> Iterator[None]:
    with deliver_on_commit():
        yield


@pytest.fixture
def messagebus_registry() -> Iterator[Registry]:
    with registry.temporary() as temporary:
        yield temporary


@pytest.fixture
def messagebus_dependencies() -> Iterator[Callable[..., None]]:
    with ExitStack() as stack:
        yield lambda **values: stack.enter_context(dependencies.override(**values))
