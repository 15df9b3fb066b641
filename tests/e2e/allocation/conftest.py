import os
import socket
import sys

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.conftest import database_url
from tests.factories import UserFactory
from tests.subprocesses import Watched

WRITE_PERMISSIONS = ["add_batch", "change_batch", "add_orderline"]


@pytest.fixture
def clerk(db: None) -> User:
    """A user who may add and change batches and allocate order lines."""
    return UserFactory(permissions=WRITE_PERMISSIONS)


@pytest.fixture
def api(clerk: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(clerk)
    return client


@pytest.fixture
def uvicorn(transactional_db):
    """Start ``uvicorn config.asgi:application`` (as the README runs it) on the test
    database, anonymous API access allowed: ``url = uvicorn(extra_env)``."""
    servers: list[Watched] = []

    def start(env: dict[str, str] | None = None) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        full_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": database_url(),
            "DJANGO_SECRET_KEY": "tests-only-secret-key",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "API_ALLOW_ANONYMOUS": "1",
            **(env or {}),
        }
        args = ["config.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        servers.append(
            Watched(
                [sys.executable, "-m", "uvicorn", *args],
                env=full_env,
                ready="Uvicorn running on",
                what="uvicorn",
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop()
