"""GET /health/: the database and the outbox, for a load balancer or a monitor."""

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

import messagebus
from messagebus.models import Delivery, WorkerBeat
from tests.busapp.events import Pinged
from tests.conftest import ROOT, database_url, postgres_only
from tests.proxy import Proxy

pytestmark = pytest.mark.django_db(transaction=True)


def test_ok_without_logging_in_or_cookies(client):
    messagebus.bus.handle(Pinged(n=1))  # delivered inline
    response = client.get("/health/")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "outbox": {
            "pending": 0,
            "due": 0,
            "dead": 0,
            "lag_seconds": 0.0,
            "waiting_for_a_handler": 0,
            "paused": 0,
        },
    }
    assert not response.cookies
    assert "no-cache" in response["Cache-Control"]


@override_settings(MESSAGEBUS={"EXECUTOR": "worker", "HEALTH_MAX_LAG": 30})
def test_degraded_when_the_outbox_falls_behind(client):
    messagebus.bus.handle(Pinged(n=1))
    assert client.get("/health/").json()["status"] == "ok"  # due, but not late
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=45))
    report = client.get("/health/").json()
    assert report["status"] == "degraded"
    [reason] = report["reasons"]
    assert reason.startswith("the oldest due delivery has waited 4")
    assert reason.endswith("more than HEALTH_MAX_LAG (30s)")
    assert (report["outbox"]["due"], report["outbox"]["pending"]) == (1, 1)
    assert 45 <= report["outbox"]["lag_seconds"] < 300


@override_settings(MESSAGEBUS={"EXECUTOR": "worker", "HEALTH_MAX_DEAD": 1})
def test_degraded_past_the_dead_letters_allowed(client):
    for n in range(2):
        messagebus.bus.handle(Pinged(n=n))
    Delivery.objects.filter(pk=Delivery.objects.first().pk).update(status="dead")
    assert client.get("/health/").json()["status"] == "ok"  # one dead is allowed
    Delivery.objects.update(status="dead")
    response = client.get("/health/")
    assert (response.status_code, response.json()["status"]) == (200, "degraded")
    assert response.json()["reasons"] == ["2 dead, more than HEALTH_MAX_DEAD (1)"]


REFUSED = 'connection to server at "10.1.2.3", port 5432 failed: Connection refused'


@pytest.fixture
def database_refuses(monkeypatch):
    from django.db import OperationalError

    from messagebus.ops import health

    def refuse(using):
        raise OperationalError(REFUSED)

    monkeypatch.setattr(health, "figures", refuse)


def test_down_says_why_but_not_where_the_database_is_to_anyone(client, database_refuses, caplog):
    response = client.get("/health/")

    assert response.status_code == 503
    assert response.json() == {
        "status": "down",
        "database": "down",
        "reasons": ["the database does not answer"],
    }
    assert "10.1.2.3" not in response.content.decode()
    assert REFUSED in caplog.text  # for whoever reads the logs


def test_down_tells_staff_the_databases_error(admin_client, database_refuses):
    response = admin_client.get("/health/")

    assert response.status_code == 503
    assert response.json()["error"] == REFUSED


CHECK = "from messagebus.ops.health import check; print(check('default')[0])"


# PostgreSQL: PyMySQL, MariaDB's driver here, bounds by connect_timeout the TCP connect only,
# not the server's greeting, which a cut network never sends (mysqlclient bounds both).
@postgres_only
def test_down_within_seconds_when_the_database_is_cut_off_then_back():
    proxy, url = Proxy.to(database_url())
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings"}

    def health() -> tuple[str, float]:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "shell", "-c", CHECK],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.stdout.strip().splitlines()[-1], time.monotonic() - started

    assert health()[0] == "ok"
    proxy.cut()
    status, took = health()
    assert status == "down"
    assert took < 45  # the connect timeout (5 s), plus starting Django: not TCP's minutes
    proxy.mend()
    assert health()[0] == "ok"


@override_settings(MESSAGEBUS={"EXECUTOR": "worker", "MAX_DELIVERIES": 1, "RETRY_ATTEMPTS": 1})
def test_status_tells_the_lag_the_rate_and_the_dead_as_json_too(messagebus_registry):
    import json
    from io import StringIO

    from django.core.management import call_command

    from messagebus.ops import health
    from messagebus.processes.worker import Worker

    def broken(event: Pinged) -> None:
        raise LookupError("no template")

    messagebus_registry.register(None, broken)
    for n in range(3):
        messagebus.bus.handle(Pinged(n=n))
    Worker(once=True).run()  # record_ping done thrice, broken dead thrice
    [stopped] = WorkerBeat.objects.all()  # kept, marked stopped: not listed as seen
    assert stopped.stopped and not health.workers_seen("default").exists()
    out = StringIO()
    call_command("messagebus", "status", stdout=out)
    assert "Workers seen in the last minute: 0\n" in out.getvalue()
    assert f"  Last seen: {stopped.id} at " in out.getvalue()
    assert out.getvalue().count(", when it stopped.") == 1
    messagebus.bus.handle(Pinged(n=9))
    running = Worker()
    running.beat(running.processed)  # as it does before each batch
    assert WorkerBeat.objects.get(id=running.id).role == "worker"
    Delivery.objects.filter(status="pending").update(
        next_attempt_at=timezone.now() - timedelta(seconds=90)
    )

    out = StringIO()
    call_command("messagebus", "status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["statuses"] == {"pending": 2, "done": 3, "dead": 3, "discarded": 0}
    assert (report["due"], report["done_last_minute"]) == (2, 3)
    assert 90 <= report["lag_seconds"] < 300
    [dead] = report["dead_by_handler"]
    assert dead["count"] == 3 and dead["error"].startswith("builtins.LookupError: no template")
    assert [w["id"] for w in report["workers"]] == [running.id]

    out = StringIO()
    call_command("messagebus", "status", stdout=out)
    assert "Due now: 2; the oldest has waited 9" in out.getvalue()
    assert "Done in the last minute: 3." in out.getvalue()
    assert f"Workers seen in the last minute: 1\n  {running.id}: 0 deliveries" in out.getvalue()


def test_each_process_says_its_role_in_its_heartbeat(db):
    from messagebus.processes.consumer import Consumer
    from messagebus.processes.relay import Relay
    from messagebus.processes.worker import Worker

    for process in (Worker(), Relay(), Consumer()):
        process.beat(0)
    roles = dict(WorkerBeat.objects.values_list("role", "id"))
    assert set(roles) == {"worker", "relay", "consumer"}
    assert roles["relay"].startswith("relay:") and roles["consumer"].startswith("consumer:")
