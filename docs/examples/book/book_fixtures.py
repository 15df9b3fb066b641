"""Stand-ins for the fixtures of the book's ``tests/conftest.py``, to run its end-to-end
tests, unchanged, against this service::

    PYTHONPATH=src:/path/to/checkout/docs/examples/book \\
        pytest --noconftest -p book_fixtures tests/e2e/test_api.py

The book's conftest imports SQLAlchemy for its own database and restarts its Flask app
and its Redis consumer with docker-compose. Here the service is already running (with
its own database, migrated), so each fixture only waits for its server to answer, as
the book's fixtures do after their restart. The addresses are the book's
(``allocation.config``, from its ``src/``).
"""

import pytest
import requests
from tenacity import retry, stop_after_delay

from allocation import config

pytest.register_assert_rewrite("tests.e2e.api_client")


@retry(stop=stop_after_delay(10))
def wait_for_webapp_to_come_up() -> requests.Response:
    return requests.get(config.get_api_url())


@retry(stop=stop_after_delay(10))
def wait_for_redis_to_come_up() -> bool:
    import redis

    return bool(redis.Redis(**config.get_redis_host_and_port()).ping())


@pytest.fixture(scope="session")
def postgres_db() -> None:
    """The service's own database, which ``manage.py migrate`` made ready."""


@pytest.fixture
def restart_api() -> None:
    wait_for_webapp_to_come_up()


@pytest.fixture
def restart_redis_pubsub() -> None:
    wait_for_redis_to_come_up()
