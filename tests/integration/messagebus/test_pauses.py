"""Pausing a handler: its deliveries wait, pending, until it is resumed, on every path."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import override_settings
from django.urls import reverse

import messagebus
from messagebus import executors
from messagebus.delivery import concurrent
from messagebus.executors.celery import run_delivery
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery, Pause
from messagebus.ops import prometheus
from messagebus.outbox import states
from messagebus.outbox.reference import Reference
from tests.busapp.commands import Deposit, OpenAccount
from tests.busapp.events import Napped, Pinged
from tests.busapp.models import Entry

pytestmark = pytest.mark.django_db(transaction=True)
PING = "tests.busapp.handlers.record_ping"
NAP = "tests.busapp.handlers.nap"


def statuses(handler: str) -> list[str]:
    return list(
        Delivery.objects.filter(handler=handler).order_by("id").values_list("status", flat=True)
    )


def pings() -> list[int]:
    return sorted(Entry.objects.filter(account="ping").values_list("amount", flat=True))


def test_a_paused_handlers_deliveries_wait_inline_and_run_when_it_is_resumed():
    assert messagebus.pause(PING, by="ops", reason="the printer is out of paper") is True
    messagebus.bus.handle(Pinged(n=1))
    messagebus.bus.handle(Pinged(n=2))

    assert pings() == []
    assert statuses(PING) == ["pending", "pending"]
    assert Pause.objects.get().paused_by == "ops"

    assert messagebus.resume(PING) is True

    assert pings() == [1, 2]
    assert statuses(PING) == ["done", "done"]
    assert not Pause.objects.exists()


def test_pausing_twice_or_resuming_what_is_not_paused_says_so_and_changes_nothing():
    assert messagebus.pause(PING, reason="first") is True
    assert messagebus.pause(PING, reason="second") is False
    assert Pause.objects.get().reason == "first"
    assert messagebus.resume(PING) is True
    assert messagebus.resume(PING) is False


def test_only_a_handler_with_deliveries_can_be_paused():
    with pytest.raises(messagebus.NotPausable, match="No event handler is registered as 'nope'"):
        messagebus.pause("nope")
    command = r"registered as 'tests\.busapp\.handlers\.deposit'"
    with pytest.raises(messagebus.NotPausable, match=command):
        messagebus.pause("tests.busapp.handlers.deposit")  # a command's
    with pytest.raises(messagebus.NotPausable, match="it has no deliveries to hold back"):
        messagebus.pause("allocation.handlers.add_allocation_to_read_model")
    assert not Pause.objects.exists()


def test_workers_claim_none_of_a_paused_handlers_deliveries_and_the_others_run():
    with executors.use(WorkerExecutor()):
        messagebus.pause(PING)
        messagebus.bus.handle(OpenAccount("alice"))
        messagebus.bus.handle(Deposit("alice", 5))  # write_entry and audit: not paused
        messagebus.bus.handle(Pinged(n=1))

        concurrent.drain("default")

        assert statuses(PING) == ["pending"]
        assert Delivery.objects.exclude(handler=PING).exclude(status="done").count() == 0
        assert Delivery.objects.get(handler=PING).runs == 0  # waiting costs no run

        messagebus.resume(PING)
        concurrent.drain("default")

    assert statuses(PING) == ["done"]
    assert pings() == [1]


def test_a_celery_task_for_a_paused_handler_leaves_it_pending_and_unleased():
    messagebus.pause(PING)
    messagebus.bus.handle(Pinged(n=1))
    row = Delivery.objects.get(handler=PING)
    (claim,) = states.leased("default", [row.event_id], states.fresh_lease()) or [None]
    assert claim is None  # the sender leases none of its deliveries
    lease = states.fresh_lease()
    Delivery.objects.filter(pk=row.pk).update(lease_until=lease)  # sent before the pause

    run_delivery.run(Reference("default", row.event_id, PING).to_json(), lease.isoformat())

    row.refresh_from_db()
    assert (row.status, row.lease_until, row.runs) == ("pending", None, 0)
    assert pings() == []


def test_an_async_handlers_deliveries_wait_too():
    messagebus.pause(NAP)
    messagebus.bus.handle(Napped(n=1, seconds=0))

    assert statuses(NAP) == ["pending"]
    assert Delivery.objects.get(handler=NAP).lease_until is None

    messagebus.resume(NAP)

    assert statuses(NAP) == ["done"]


def run(*args: str) -> str:
    out = StringIO()
    call_command("messagebus", *args, stdout=out)
    return out.getvalue()


def test_the_command_pauses_and_resumes_and_status_shows_what_waits():
    said = run("pause", PING, "--reason", "printer out of paper")
    messagebus.bus.handle(Pinged(n=1))

    assert said.startswith(f"Paused {PING}; 0 deliveries wait.")
    status = run("status")
    assert f"Paused: {PING} by " in status
    assert ": printer out of paper." in status
    assert "1 delivery waits for a paused handler." in status
    report = json.loads(run("status", "--json"))
    assert report["paused"] == 1
    assert report["due"] == 0
    assert [p["handler"] for p in report["paused_handlers"]] == [PING]
    assert run("pause", PING).startswith(f"Already paused: {PING}; 1 delivery waits.")

    assert run("resume", PING) == f"Resumed {PING}.\n"
    assert pings() == [1]
    with pytest.raises(CommandError, match=f"{PING} is not paused"):
        run("resume", PING)
    with pytest.raises(CommandError, match="No event handler is registered as 'nope'"):
        run("pause", "nope")


def test_a_pause_made_by_another_process_holds_here(manage, monkeypatch):
    states.any_paused("default")  # this process looked: none was paused
    result = manage("messagebus", "pause", PING, "--reason", "deploy")
    assert result.returncode == 0, result.stderr
    monkeypatch.setattr(states, "PAUSE_RECHECK", 0)  # PAUSE_RECHECK (1 s) later

    messagebus.bus.handle(Pinged(n=1))

    assert statuses(PING) == ["pending"]
    assert Pause.objects.get(handler=PING).reason == "deploy"


def test_health_keeps_a_paused_handlers_deliveries_out_of_due_and_lag(client):
    messagebus.pause(PING)
    messagebus.bus.handle(Pinged(n=1))
    Delivery.objects.update(next_attempt_at="2000-01-01T00:00:00Z")  # long overdue

    report = client.get("/health/").json()

    assert report["status"] == "ok"
    assert report["outbox"]["paused"] == 1
    assert report["outbox"]["due"] == 0
    assert report["outbox"]["lag_seconds"] == 0


@override_settings(MESSAGEBUS={"METRICS_ALLOWED_IPS": ["127.0.0.1"]})
def test_metrics_count_the_deliveries_paused_handlers_hold(client, monkeypatch):
    monkeypatch.setattr(prometheus, "OUTBOX_EVERY", 0)
    messagebus.pause(PING)
    messagebus.bus.handle(Pinged(n=1))
    messagebus.bus.handle(Pinged(n=2))

    assert "messagebus_outbox_paused 2.0" in client.get("/metrics").content.decode()


def test_the_dashboard_pauses_and_resumes_a_handler_saying_who(admin_client, admin_user):
    dashboard = reverse("admin:messagebus_delivery_dashboard")
    page = admin_client.get(dashboard).content.decode()
    assert PING in page and 'value="Pause"' in page

    response = admin_client.post(
        reverse("admin:messagebus_delivery_pause"), {"handler": PING, "reason": "vendor down"}
    )
    assert response.status_code == 302
    pause = Pause.objects.get()
    assert (pause.handler, pause.paused_by, pause.reason) == (
        PING,
        admin_user.username,
        "vendor down",
    )
    assert 'value="Resume"' in admin_client.get(dashboard).content.decode()  # none pending
    messagebus.bus.handle(Pinged(n=1))
    handlers = {h["name"]: h for h in admin_client.get(dashboard).context["handlers"]}
    assert handlers[PING]["pending"] == 1
    assert handlers[PING]["pause"].reason == "vendor down"
    assert handlers["tests.busapp.handlers.write_entry"] == {
        "name": "tests.busapp.handlers.write_entry",
        "pending": 0,
        "pause": None,
        "running": 0,
        "cap": None,
        "key": None,
    }

    admin_client.post(reverse("admin:messagebus_delivery_resume"), {"handler": PING})

    assert not Pause.objects.exists()
    assert pings() == [1]


def test_the_dashboards_buttons_are_for_those_who_may_retry(client, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(viewer)

    response = client.post(reverse("admin:messagebus_delivery_pause"), {"handler": PING})

    assert response.status_code == 403
    assert not Pause.objects.exists()
    assert client.get(reverse("admin:messagebus_delivery_pause")).status_code == 405


def test_a_resume_rolled_back_runs_nothing_and_stays_paused():
    messagebus.pause(PING)
    messagebus.bus.handle(Pinged(n=1))

    with pytest.raises(RuntimeError), transaction.atomic():
        messagebus.resume(PING)
        raise RuntimeError("the request failed after the resume")

    assert pings() == []
    assert Pause.objects.exists()


def test_a_handler_registered_in_the_workers_only_can_be_paused_by_its_deliveries():
    messagebus.bus.handle(Pinged(n=1))  # a delivery stored for it
    Delivery.objects.update(handler="workers.only.handler")

    assert messagebus.pause("workers.only.handler") is True
    assert "(no handler of that name is registered in this process)" in run("status")


def test_the_done_mark_reads_the_pauses_only_while_some_handler_is_paused(monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(states, "PAUSE_RECHECK", 0)

    def done_marks() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            messagebus.bus.handle(Pinged(n=len(pings())))
        return [q["sql"] for q in queries if q["sql"].startswith("UPDATE")]

    assert not any("messagebus_pause" in sql for sql in done_marks())
    messagebus.pause("tests.busapp.handlers.write_entry")
    assert all("messagebus_pause" in sql for sql in done_marks())


def test_workers_claim_with_the_pauses_only_while_some_handler_is_paused(monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(states, "PAUSE_RECHECK", 0)

    def claims() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            states.claim("default", 10)
        return [q["sql"] for q in queries if "SKIP LOCKED" in q["sql"] or "ORDER BY" in q["sql"]]

    assert claims() and not any("messagebus_pause" in sql for sql in claims())
    messagebus.pause(PING)
    assert all("messagebus_pause" in sql for sql in claims())
