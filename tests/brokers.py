"""What the tests of messages to and from other services share: the real Redis and
RabbitMQ, a consumer subprocess, waiting for what it does."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import pytest
from django.conf import settings
from django.test import override_settings

from tests.conftest import REDIS_URL, ROOT, database_url
from tests.subprocesses import Watched

needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0"
)


def external(url: str | None):
    return override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": url})


class ConsumerProcess(Watched):
    """`manage.py messagebus consume` on the test database, listening once it says so
    (``env``: more of its environment)."""

    def __init__(self, url: str, env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO",
            "DJANGO_SETTINGS_MODULE": "tests.settings", "MESSAGEBUS_EXTERNAL_URL": url,
            **(env or {}),
        }  # fmt: skip
        super().__init__(
            [sys.executable, str(ROOT / "manage.py"), "messagebus", "consume"],
            env=env,
            ready="Consuming ",
            what="the consumer",
        )


def wait_for(condition, timeout: float = 10, output: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out; {output()}"
        time.sleep(0.05)


def read_all(queue) -> list[dict]:
    bodies = []
    while (message := queue.get(no_ack=True)) is not None:
        bodies.append(json.loads(message.body))
    return bodies
