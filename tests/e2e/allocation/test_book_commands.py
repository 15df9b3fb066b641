"""The commands docs/book.md gives for the book's end-to-end tests: ``make run PORT=5005``
and ``docs/examples/book/serve-with-workers.sh``, each started as the page writes it (on a
free port and the test database), answer the book's client, which sends
``Host: localhost:5005``, on its routes and, with Redis, its channels."""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from tests.conftest import REDIS_URL, ROOT, database_url
from tests.subprocesses import Watched

BOOK_HOST = "localhost:5005"  # what the book's requests send, from its config.get_api_url()

needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BookClient:
    """The book's api_client: JSON to the routes, with the Host header it sends."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Host": BOOK_HOST, "Content-Type": "application/json"}
        try:
            connection.request(method, path, None if body is None else json.dumps(body), headers)
            response = connection.getresponse()
            content = response.read()
            if response.getheader("Content-Type") != "application/json":
                return response.status, content.decode()
            return response.status, json.loads(content)
        finally:
            connection.close()

    def add_batch(self, ref: str, sku: str, qty: int, eta: str | None) -> None:
        body = {"ref": ref, "sku": sku, "qty": qty, "eta": eta}
        assert self.request("POST", "/add_batch", body)[0] == 201


def suffix() -> str:
    return uuid.uuid4().hex[:6]


def the_books_test_api(client: BookClient) -> None:
    """The book's tests/e2e/test_api.py, both tests."""
    orderid, sku, othersku = f"order-{suffix()}", f"sku-{suffix()}", f"sku-other-{suffix()}"
    early, later, other = f"batch-1-{suffix()}", f"batch-2-{suffix()}", f"batch-3-{suffix()}"
    client.add_batch(later, sku, 100, "2011-01-02")
    client.add_batch(early, sku, 100, "2011-01-01")
    client.add_batch(other, othersku, 100, None)
    status, _ = client.request("POST", "/allocate", {"orderid": orderid, "sku": sku, "qty": 3})
    assert status == 202
    assert client.request("GET", f"/allocations/{orderid}") == (
        200,
        [{"sku": sku, "batchref": early}],
    )

    unknown, orderid = f"sku-{suffix()}", f"order-{suffix()}"
    body = {"orderid": orderid, "sku": unknown, "qty": 20}
    assert client.request("POST", "/allocate", body) == (400, {"message": f"Invalid sku {unknown}"})
    assert client.request("GET", f"/allocations/{orderid}")[0] == 404


def the_books_test_external_events(client: BookClient) -> None:
    """The book's tests/e2e/test_external_events.py, with 10 s rather than its 3."""
    import redis

    orderid, sku = f"order-{suffix()}", f"sku-{suffix()}"
    earlier, later = f"batch-old-{suffix()}", f"batch-newer-{suffix()}"
    client.add_batch(earlier, sku, 10, "2011-01-01")
    client.add_batch(later, sku, 10, "2011-01-02")
    assert client.request("POST", "/allocate", {"orderid": orderid, "sku": sku, "qty": 10})[0]
    assert client.request("GET", f"/allocations/{orderid}")[1][0]["batchref"] == earlier

    connection = redis.Redis.from_url(REDIS_URL)
    subscription = connection.pubsub()
    subscription.subscribe("line_allocated")
    assert subscription.get_message(timeout=3)["type"] == "subscribe"
    connection.publish("change_batch_quantity", json.dumps({"batchref": earlier, "qty": 5}))

    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        message = subscription.get_message(timeout=1)
        if message and message["type"] == "message":
            seen.append(json.loads(message["data"]))
            if seen[-1]["orderid"] == orderid and seen[-1]["batchref"] == later:
                break
    else:
        raise AssertionError(f"no reallocation of {orderid} to {later} published: {seen}")
    subscription.close()
    connection.close()


def environment(**extra: str) -> dict[str, str]:
    """This process's environment, without what the test suite sets for itself."""
    ours = {"DJANGO_SETTINGS_MODULE", "DJANGO_ALLOWED_HOSTS", "DJANGO_DEBUG"}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("MESSAGEBUS_")}
    return {**env, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1", **extra}


def make_run_exports() -> dict[str, str]:
    """The variables the Makefile's ``run`` target exports."""
    makefile = (ROOT / "Makefile").read_text()
    return dict(re.findall(r"^run: export (\w+) = (.*)$", makefile, re.MULTILINE))


@pytest.fixture
def make_run(transactional_db):
    """``make run PORT=...``'s server and its environment, on the test database:
    ``start(**extra_env)`` gives its port."""
    started: list[Watched] = []

    def start(**extra: str) -> int:
        port = free_port()
        dry = subprocess.run(
            ["make", "-n", "run", f"PORT={port}"], cwd=ROOT, capture_output=True, text=True
        )
        [command] = [line for line in dry.stdout.splitlines() if "runserver" in line]
        assert command.endswith(f"manage.py runserver 127.0.0.1:{port}"), command
        args = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        env = environment(**make_run_exports(), **extra)
        started.append(Watched(args, env=env, ready="Quit the server", what="make run"))
        return port

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def serve_with_workers(transactional_db):
    """docs/examples/book/serve-with-workers.sh on a free port and the test database:
    ``start(**extra_env)`` gives (its port, the process)."""
    started: list[Watched] = []

    def start(**extra: str) -> tuple[int, Watched]:
        port = free_port()
        args = ["sh", str(ROOT / "docs" / "examples" / "book" / "serve-with-workers.sh")]
        env = environment(PORT=str(port), **extra)
        started.append(Watched(args, env=env, ready="Listening at", what="the script"))
        return port, started[-1]

    yield start
    for server in started:
        server.stop()


def test_make_run_answers_the_books_client(make_run):
    assert make_run_exports()["API_ALLOW_ANONYMOUS"] == "1"  # the book's client signs in as no one

    the_books_test_api(BookClient(make_run()))


def test_make_run_refuses_a_host_that_allowed_hosts_leaves_out(make_run):
    """Why the page says to name ``localhost``: a host Django does not allow is a 400."""
    client = BookClient(make_run(DJANGO_ALLOWED_HOSTS="127.0.0.1"))

    assert client.request("GET", "/allocations/order-1")[0] == 400


def test_serve_with_workers_answers_the_books_client(serve_with_workers):
    port, script = serve_with_workers(MESSAGEBUS_EXTERNAL_URL="")

    the_books_test_api(BookClient(port))
    deadline = time.monotonic() + 30  # the workers start beside the server, maybe after it
    while script.output.count("Worker ") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert script.output.count("Worker ") >= 2, script.output  # both workers started
    assert f"Listening at: http://127.0.0.1:{port}" in script.output


@needs_redis
def test_make_run_with_a_consumer_takes_the_books_redis_messages(make_run, manage):
    port = make_run(MESSAGEBUS_EXTERNAL_URL=REDIS_URL)
    consumer = Watched(
        [sys.executable, "manage.py", "messagebus", "consume"],
        env=environment(MESSAGEBUS_EXTERNAL_URL=REDIS_URL, DJANGO_DEBUG="1"),
        ready="Consuming ",
        what="make consume",
    )
    try:
        the_books_test_external_events(BookClient(port))
    finally:
        consumer.stop()


@needs_redis
def test_serve_with_workers_takes_the_books_redis_messages(serve_with_workers):
    port, script = serve_with_workers(MESSAGEBUS_EXTERNAL_URL=REDIS_URL)
    deadline = time.monotonic() + 30
    while "Consuming " not in script.output and time.monotonic() < deadline:
        time.sleep(0.1)

    the_books_test_external_events(BookClient(port))
