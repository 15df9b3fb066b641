import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from asgiref.sync import SyncToAsync
from django.db import connection, connections
from kombu import Connection, Queue

from messagebus.external.transports import amqp

pytest_plugins = ["messagebus.pytest_plugin"]

ROOT = Path(__file__).resolve().parent.parent


def on_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def on_mariadb() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith("mysql://")


def marked(*marks: pytest.MarkDecorator):
    """A decorator that puts every one of ``marks`` on a test; ``.marks`` lists them, for
    ``pytestmark`` and ``pytest.param(marks=...)``."""

    def mark(test):
        for each in marks:
            test = each(test)
        return test

    mark.marks = list(marks)
    return mark


# The engine's tests of many processes and threads at once: on either server database.
server_database = pytest.mark.skipif(
    not (on_postgres() or on_mariadb()),
    reason="needs PostgreSQL or MariaDB: set DATABASE_URL=postgres://... or mysql://... "
    "(row locks, SKIP LOCKED; SQLite runs one writer at a time)",
)
# PostgreSQL's own abilities (LISTEN/NOTIFY, its errors and settings): marked ``postgres``,
# which the MariaDB run leaves out (-m "not postgres").
postgres_only = marked(
    pytest.mark.postgres,
    pytest.mark.skipif(
        not on_postgres(),
        reason="needs PostgreSQL: set DATABASE_URL=postgres://... (LISTEN/NOTIFY, its own SQL)",
    ),
)


BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

celery_on_postgres = marked(
    pytest.mark.postgres,
    pytest.mark.skipif(
        not (on_postgres() and BROKER_URL.startswith(("amqp://", "pyamqp://"))),
        reason="needs PostgreSQL and RabbitMQ: set DATABASE_URL=postgres://... and "
        "CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//",
    ),
)
needs_rabbitmq = pytest.mark.skipif(
    not BROKER_URL.startswith("amqp://"),
    reason="needs RabbitMQ: set CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//",
)
redis_on_postgres = marked(
    pytest.mark.postgres,
    pytest.mark.skipif(
        not (on_postgres() and REDIS_URL),
        reason="needs PostgreSQL and Redis: set DATABASE_URL=postgres://... and "
        "REDIS_URL=redis://127.0.0.1:6379/0",
    ),
)


@pytest.fixture
def rabbitmq_queue():
    """A queue of the test's own, bound to line_allocated on the messagebus exchange."""
    with Connection(BROKER_URL) as connection:
        queue = Queue(
            f"test-line-allocated-{uuid.uuid4().hex[:8]}", amqp.exchange(),
            routing_key="line_allocated", auto_delete=True,
        )(connection.default_channel)  # fmt: skip
        queue.declare()
        yield queue
        queue.delete()


def database_url() -> str:
    """A URL for the test database, for subprocesses to share it."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user = settings["USER"] or ""
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    port = f":{settings['PORT']}" if settings["PORT"] else ""
    scheme = "mysql" if connection.vendor == "mysql" else "postgres"
    return f"{scheme}://{user}{password}@{settings['HOST'] or '127.0.0.1'}{port}/{settings['NAME']}"


@pytest.fixture
def manage(transactional_db):
    """Run ``manage.py`` in a new process on the test database."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60, **kwargs):
        full_env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            **kwargs,
        )

    return run


def pytest_sessionfinish(session, exitstatus):
    """With REQUIRE_SERVICES=1 (CI), a skipped test fails the run."""
    if not os.environ.get("REQUIRE_SERVICES"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"REQUIRE_SERVICES=1 but {len(skipped)} tests were skipped", red=True)
        session.exitstatus = 1


@pytest.fixture
def anyio_backend():
    """The async tests' event loop: asyncio's. After each, the connections that Django's
    async ORM opened in asgiref's executor thread are closed, as a request's end closes
    them: else one outlives the tests and the test database cannot be dropped."""
    yield "asyncio"
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
