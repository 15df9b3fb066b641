"""The outbox in the admin: read-only, filterable, with retry and discard."""

import re
import uuid
from datetime import datetime, timedelta
from html import unescape
from itertools import pairwise

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import ERROR, INFO, SUCCESS, WARNING, get_messages
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

import messagebus
from messagebus.models import Delivery, StoredEvent, WorkerBeat
from messagebus.ops import dashboard, health
from messagebus.testing import run_due
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Opened
from tests.busapp.models import Entry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dead_delivery(messagebus_registry, settings):
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "MAX_DELIVERIES": 1}
    state = {"broken": True}

    def greet(event: Opened) -> None:
        if state["broken"]:
            raise LookupError("no template for greeting")
        Entry.objects.create(account=event.name, amount=0, note="greeted")

    messagebus_registry.register(None, greet)
    messagebus.bus.handle(OpenAccount("ann"))
    run_due()  # the rest of its one run
    row = Delivery.objects.get()
    assert row.status == "dead"
    return row, state


def messages_of(response) -> list[tuple[int, str]]:
    return [(message.level, message.message) for message in get_messages(response.wsgi_request)]


def page_of(row: Delivery) -> str:
    return reverse("admin:messagebus_delivery_change", args=[row.pk])


def button(row: Delivery, action: str) -> str:
    return reverse(f"admin:messagebus_delivery_{action}", args=[row.pk])


@pytest.fixture
def viewer(client, django_user_model):
    """A staff client that may look at deliveries, not retry or discard them."""
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client.force_login(user)
    return client


def test_the_delivery_list_filters_and_searches(admin_client, dead_delivery):
    row, _ = dead_delivery
    url = reverse("admin:messagebus_delivery_changelist")
    page = admin_client.get(url, {"status__exact": "dead"})
    assert page.status_code == 200
    assert "no template for greeting" in page.content.decode()
    assert admin_client.get(url, {"status__exact": "done"}).context["cl"].result_count == 0
    assert (
        admin_client.get(url, {"q": str(row.event.correlation_id)}).context["cl"].result_count == 1
    )
    assert admin_client.get(url, {"event__type": "busapp.Opened"}).context["cl"].result_count == 1


def test_a_delivery_shows_payload_error_and_traceback(admin_client, dead_delivery):
    row, _ = dead_delivery
    page = admin_client.get(
        reverse("admin:messagebus_delivery_change", args=[row.pk])
    ).content.decode()
    assert "&quot;name&quot;: &quot;ann&quot;" in page
    assert "builtins.LookupError: no template for greeting" in page
    assert "Traceback (most recent call last)" in page
    assert 'name="_save"' not in page  # read-only


def test_the_event_page_lists_its_deliveries(admin_client, dead_delivery):
    row, _ = dead_delivery
    page = admin_client.get(reverse("admin:messagebus_storedevent_change", args=[row.event_id]))
    assert page.status_code == 200
    content = page.content.decode()
    assert "dead_delivery.&lt;locals&gt;.greet" in content
    assert "no template for greeting" in content


def test_retry_now_runs_a_dead_delivery_again(admin_client, dead_delivery):
    row, state = dead_delivery
    state["broken"] = False
    response = admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "retry_now", "_selected_action": [row.pk]},
        follow=True,
    )
    assert messages_of(response) == [(SUCCESS, "Requeued 1 delivery: 1 done.")]
    row.refresh_from_db()
    assert row.status == "done"
    assert Entry.objects.filter(note="greeted").count() == 1


def test_discard_asks_first_on_a_page_of_its_own(admin_client, dead_delivery):
    row, _ = dead_delivery
    done = Delivery.objects.create(event=row.event, handler="tests.other", status="done")

    response = admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "discard", "_selected_action": [row.pk, done.pk]},
    )

    assert response.status_code == 200
    assert response.templates[0].name == "admin/messagebus/delivery/discard_confirmation.html"
    page = response.content.decode()
    assert "Discard this delivery? It will never run" in page
    assert f"Delivery {row.pk} (Dead) to {row.handler}" in unescape(page)
    assert f"Left as it is, finished already: {done.pk} (Done)." in page
    assert '<input type="hidden" name="action" value="discard">' in page
    assert '<input type="hidden" name="post" value="yes">' in page
    assert f'<input type="hidden" name="_selected_action" value="{done.pk}">' in page
    row.refresh_from_db()
    assert row.status == "dead"  # nothing discarded yet


def test_discard_keeps_the_row_and_never_runs_it(admin_client, dead_delivery):
    row, state = dead_delivery
    admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "discard", "_selected_action": [row.pk], "post": "yes"},
    )
    row.refresh_from_db()
    assert row.status == "discarded" and row.finished_at is not None
    state["broken"] = False
    admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "retry_now", "_selected_action": [row.pk]},
    )
    row.refresh_from_db()
    assert row.status == "discarded"


def test_events_and_deliveries_cannot_be_added_or_edited_by_hand(admin_client, dead_delivery):
    assert admin_client.get(reverse("admin:messagebus_delivery_add")).status_code == 403
    assert admin_client.get(reverse("admin:messagebus_storedevent_add")).status_code == 403
    event = StoredEvent.objects.get()
    admin_client.post(
        reverse("admin:messagebus_storedevent_change", args=[event.pk]), {"type": "x"}
    )
    event.refresh_from_db()
    assert event.type == "busapp.Opened"


def test_staff_without_permission_cannot_retry(viewer, dead_delivery):
    row, state = dead_delivery
    state["broken"] = False
    viewer.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "retry_now", "_selected_action": [row.pk]},
    )
    row.refresh_from_db()
    assert row.status == "dead"


# The console: buttons on a delivery's page, messages that say how a retry ended.


def test_an_unfinished_delivery_has_retry_and_discard_buttons(admin_client, dead_delivery):
    row, _ = dead_delivery
    page = admin_client.get(page_of(row)).content.decode()

    for action, label in [("retry", "Retry now"), ("discard", "Discard")]:
        form = re.search(
            rf'<form method="post" action="{button(row, action)}">(.*?)</form>', page, re.S
        )
        assert form, f"no {action} form"
        assert 'name="csrfmiddlewaretoken"' in form[1]
        assert '<button type="submit"' in form[1] and label in form[1]


def test_a_finished_delivery_has_no_buttons(admin_client, dead_delivery):
    row, _ = dead_delivery
    Delivery.objects.filter(pk=row.pk).update(status="done")

    page = admin_client.get(page_of(row)).content.decode()

    assert button(row, "retry") not in page and button(row, "discard") not in page


def test_retry_now_says_the_delivery_is_done(admin_client, dead_delivery):
    row, state = dead_delivery
    state["broken"] = False

    response = admin_client.post(button(row, "retry"))

    assert response.status_code == 302 and response["Location"] == page_of(row)
    assert messages_of(response) == [(SUCCESS, f"Delivery {row.pk} is done.")]
    assert Entry.objects.filter(note="greeted").count() == 1


def test_retry_now_says_it_failed_again_and_when_it_runs_next(
    admin_client, dead_delivery, settings
):
    row, _ = dead_delivery
    settings.MESSAGEBUS = {
        **settings.MESSAGEBUS,
        "MAX_DELIVERIES": 5,
        "REDELIVERY_DELAY": 30,
        "RETRY_ATTEMPTS": 1,
    }

    response = admin_client.post(button(row, "retry"))

    assert messages_of(response) == [
        (
            WARNING,
            f"Delivery {row.pk} failed again: builtins.LookupError: no template for greeting;"
            " next run in 30s.",
        )
    ]
    row.refresh_from_db()
    assert (row.status, row.runs) == ("pending", 1)


def test_retry_now_says_it_is_dead_and_why(admin_client, dead_delivery, settings):
    row, _ = dead_delivery
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "RETRY_ATTEMPTS": 1}  # a run of one call

    response = admin_client.post(button(row, "retry"))

    assert messages_of(response) == [
        (
            ERROR,
            f"Delivery {row.pk} is dead: builtins.LookupError: no template for greeting"
            " (failed 1 run).",
        )
    ]


def test_retry_now_with_workers_says_a_worker_will_run_it(admin_client, dead_delivery, settings):
    row, state = dead_delivery
    state["broken"] = False
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "EXECUTOR": "worker"}

    response = admin_client.post(button(row, "retry"))

    assert messages_of(response) == [(INFO, f"Delivery {row.pk} is due now; a worker will run it.")]
    row.refresh_from_db()
    assert (row.status, row.runs) == ("pending", 0)
    assert not Entry.objects.filter(note="greeted").exists()


def test_discard_button_asks_first_then_discards_it(admin_client, dead_delivery):
    row, _ = dead_delivery

    asked = admin_client.post(button(row, "discard"))

    assert asked.status_code == 200 and "Yes, discard" in asked.content.decode()
    assert 'name="action"' not in asked.content.decode()  # posts back to the button's URL
    row.refresh_from_db()
    assert row.status == "dead"

    response = admin_client.post(button(row, "discard"), {"post": "yes"})

    assert response.status_code == 302 and response["Location"] == page_of(row)
    assert messages_of(response) == [(SUCCESS, f"Delivery {row.pk} discarded.")]
    row.refresh_from_db()
    assert row.status == "discarded"


@pytest.mark.parametrize(("action", "done"), [("retry", "retried"), ("discard", "discarded")])
def test_the_buttons_leave_a_finished_delivery_alone(admin_client, dead_delivery, action, done):
    row, state = dead_delivery
    state["broken"] = False
    Delivery.objects.filter(pk=row.pk).update(status="done")

    response = admin_client.post(button(row, action))

    assert messages_of(response) == [
        (WARNING, f"Delivery {row.pk} is done: only a pending or dead delivery can be {done}.")
    ]
    row.refresh_from_db()
    assert row.status == "done"
    assert not Entry.objects.filter(note="greeted").exists()


@pytest.mark.parametrize("action", ["retry", "discard"])
def test_the_buttons_refuse_get(admin_client, dead_delivery, action):
    row, _ = dead_delivery

    assert admin_client.get(button(row, action)).status_code == 405
    row.refresh_from_db()
    assert row.status == "dead"


@pytest.mark.parametrize("action", ["retry", "discard"])
def test_the_buttons_need_the_change_permission(viewer, dead_delivery, action):
    row, state = dead_delivery
    state["broken"] = False

    assert viewer.post(button(row, action)).status_code == 403
    row.refresh_from_db()
    assert row.status == "dead"
    page = viewer.get(page_of(row))
    assert page.status_code == 200
    assert button(row, action) not in page.content.decode()


def test_the_buttons_of_an_unknown_delivery_answer_404(admin_client, db):
    assert (
        admin_client.post(reverse("admin:messagebus_delivery_retry", args=[999])).status_code == 404
    )


def test_bulk_retry_says_how_many_ended_done_pending_and_dead(
    admin_client, dead_delivery, messagebus_registry
):
    row, state = dead_delivery
    state["broken"] = False

    def flaky(event: Opened) -> None:
        raise OSError("no voice")

    messagebus_registry.register(None, flaky, name="tests.flaky", max_deliveries=5)
    flaky_row = Delivery.objects.create(event=row.event, handler="tests.flaky", status="dead")
    gone = Delivery.objects.create(  # no process took its handler on for two days
        event=row.event,
        handler="tests.gone",
        status="dead",
        created_at=timezone.now() - timedelta(days=2),
    )

    response = admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "retry_now", "_selected_action": [row.pk, flaky_row.pk, gone.pk]},
    )

    assert messages_of(response) == [(WARNING, "Requeued 3 deliveries: 1 done, 1 pending, 1 dead.")]


def test_bulk_retry_with_workers_says_a_worker_will_run_them(admin_client, dead_delivery, settings):
    row, _ = dead_delivery
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "EXECUTOR": "worker"}

    response = admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "retry_now", "_selected_action": [row.pk]},
    )

    assert messages_of(response) == [
        (SUCCESS, "Requeued 1 delivery: due now, for a worker to run.")
    ]


# What the pages show.


def test_the_delivery_list_shows_status_runs_and_error_first(admin_client, dead_delivery):
    row, _ = dead_delivery
    response = admin_client.get(reverse("admin:messagebus_delivery_changelist"))
    cl = response.context["cl"]

    assert list(cl.list_display) == [
        "action_checkbox",
        "id",
        "status_label",
        "runs",
        "error",
        "event_type",
        "handler_name",
        "created_at",
    ]
    assert list(cl.list_display_links) == ["id"]
    assert [spec.title for spec in cl.filter_specs] == ["status", "type", "handler", "when"]
    short = "&lt;locals&gt;.<wbr>greet"  # the last two dotted parts, the full name on hover
    assert f'<span title="{escape(row.handler)}">{short}</span>' in response.content.decode()
    label = '<span class="delivery-status delivery-status-dead">Dead</span>'
    assert label in response.content.decode()
    assert ".delivery-status-dead { background:" in response.content.decode()


def readonly_value(page: str, field: str) -> str:
    found = re.search(rf'field-{field}\b.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert found, f"no read-only field {field}"
    return found[1].strip()


def test_no_next_attempt_for_a_dead_delivery(admin_client, dead_delivery):
    row, _ = dead_delivery

    page = admin_client.get(page_of(row)).content.decode()
    event_page = admin_client.get(
        reverse("admin:messagebus_storedevent_change", args=[row.event_id])
    ).content.decode()

    assert readonly_value(page, "next_attempt") == "-"
    assert re.search(r'<td class="field-next_attempt">\s*<p>-</p>', event_page)


def test_a_pending_delivery_shows_its_next_attempt(admin_client, dead_delivery):
    row, _ = dead_delivery
    Delivery.objects.filter(pk=row.pk).update(status="pending")

    page = admin_client.get(page_of(row)).content.decode()

    assert readonly_value(page, "next_attempt") not in ("-", "")


def test_traceback_payload_and_error_wrap(admin_client, dead_delivery):
    row, _ = dead_delivery
    wrapping = '<pre style="white-space: pre-wrap; word-break: break-word">'

    page = admin_client.get(page_of(row)).content.decode()

    for field, text in [
        ("payload_json", "&quot;name&quot;: &quot;ann&quot;"),
        ("last_error_text", "builtins.LookupError: no template for greeting"),
        ("traceback_text", "Traceback (most recent call last)"),
    ]:
        assert readonly_value(page, field).startswith(wrapping), field
        assert text in readonly_value(page, field)


# The dashboard: the verdict, two charts, the dead letters by group, the workers.

DASHBOARD = "/admin/messagebus/delivery/dashboard/"


def stored_event() -> StoredEvent:
    return StoredEvent.objects.create(
        id=uuid.uuid4(), type="busapp.Opened", payload={"name": "ann"}, correlation_id=uuid.uuid4()
    )


def finished(handler: str, status: str, at: datetime, **fields) -> Delivery:
    """A delivery (of an event of its own) that finished, done or dead, at ``at``."""
    return Delivery.objects.create(
        event=stored_event(), handler=handler, status=status, finished_at=at, **fields
    )


def minute_ago(n: int) -> datetime:
    return timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=n)


def hhmm(when: datetime) -> str:
    return f"{timezone.localtime(when):%H:%M}"


def chart(page: str, figure: str) -> str:
    found = re.search(rf'<figure id="{figure}">\s*(<svg .*?</svg>)', page, re.S)
    assert found, f"no chart in {figure}"
    return found[1]


def bars(svg: str) -> list[str]:
    """Each bar's tooltip, left to right."""
    return re.findall(r'<rect class="bar"[^>]*><title>(.*?)</title></rect>', svg)


def test_the_dashboard_is_for_those_who_may_view_deliveries(client, viewer, django_user_model, db):
    assert viewer.get(DASHBOARD).status_code == 200
    assert reverse("admin:messagebus_delivery_dashboard") == DASHBOARD

    viewer.logout()
    response = viewer.get(DASHBOARD)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(DASHBOARD).status_code == 403


def test_the_delivery_list_and_the_app_page_link_to_the_dashboard(viewer, db):
    link = f'<a href="{DASHBOARD}">Dashboard</a>'

    for page in (reverse("admin:messagebus_delivery_changelist"), "/admin/messagebus/"):
        response = viewer.get(page)
        assert response.status_code == 200
        assert link in response.content.decode(), page


def test_a_quiet_bus_is_healthy(viewer, db):
    response = viewer.get(DASHBOARD)

    page = response.content.decode()
    assert re.search(
        r'<li class="success" id="verdict">\s*The bus is <strong>healthy</strong>.', page
    )
    assert '<svg class="chart"' in page
    # Empty minutes have no bar: zero.
    assert bars(chart(page, "done-chart")) == bars(chart(page, "lag-chart")) == []
    assert 'aria-label="Deliveries done per minute"' in page
    assert '<div class="breadcrumbs">' in page and "&rsaquo; Dashboard" in page


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu"])  # +05:45: whole minutes still
def test_the_charts_have_a_bar_per_minute_with_deliveries_done(viewer, settings, zone):
    settings.TIME_ZONE = zone
    minute = {n: minute_ago(n) for n in (1, 2, 5)}
    for n, (ago, lag) in enumerate([(5, 1), (5, 3), (2, 0.25), (1, 2), (1, 4), (1, 6)]):
        at = minute[ago] + timedelta(seconds=10 + n)
        finished("tests.done", "done", at, created_at=at - timedelta(seconds=lag))
    finished("tests.done", "done", minute_ago(60))  # before the hour
    finished("tests.dead", "dead", minute[1])  # not done
    Delivery.objects.create(event=stored_event(), handler="tests.waiting")  # not finished

    page = viewer.get(DASHBOARD).content.decode()

    assert bars(chart(page, "done-chart")) == [
        f"{hhmm(minute[5])}: 2 done",
        f"{hhmm(minute[2])}: 1 done",
        f"{hhmm(minute[1])}: 3 done",
    ]
    assert bars(chart(page, "lag-chart")) == [
        f"{hhmm(minute[5])}: longest 3.000 s, average 2.000 s, of 2 done",
        f"{hhmm(minute[2])}: longest 0.250 s, average 0.250 s, of 1 done",
        f"{hhmm(minute[1])}: longest 6.000 s, average 4.000 s, of 3 done",
    ]
    done = chart(page, "done-chart")
    assert f"time ({zone})" in done
    times = [
        int(hours) * 60 + int(minutes)
        for hours, minutes in re.findall(r'text-anchor="middle">(\d\d):(\d\d)</text>', done)
    ]
    assert [(b - a) % 1440 for a, b in pairwise(times)] == [15, 15, 15]  # every quarter hour
    content = page[page.index('<div id="content-main">') :]
    assert "<script" not in content and "<link" not in content  # nothing but the admin's own
    assert all(
        src.startswith("/static/admin/")
        for src in re.findall(r' (?:src|href)="([^"]*\.(?:js|css))"', page)
    )


@pytest.mark.parametrize(
    ("limits", "verdict", "why"),
    [
        ({}, "degraded", "3 dead, more than HEALTH_MAX_DEAD (0)"),
        ({"HEALTH_MAX_DEAD": 5}, "healthy", ""),
    ],
)
def test_the_verdict_follows_the_health_check(viewer, settings, limits, verdict, why):
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, **limits}
    for _ in range(3):
        finished("tests.dead", "dead", minute_ago(1), last_error="boom")

    page = viewer.get(DASHBOARD).content.decode()

    found = re.search(r'id="verdict">\s*The bus is <strong>(\w+)</strong>:? ?(.*?)\.\s*</li>', page)
    assert found and (found[1], found[2]) == (verdict, why)
    figures = re.findall(r"<li(?: class=\"bad\")?><strong>([^<]*)</strong>", page)
    assert figures == ["0", "0", "3", "0", "0"]  # pending, due, dead, lag, workers


def test_down_when_the_outbox_database_does_not_answer(viewer, monkeypatch):
    down = ("down", {"status": "down", "database": "down", "error": "connection refused"})
    monkeypatch.setattr(health, "check", lambda using: down)

    page = viewer.get(DASHBOARD).content.decode()

    assert re.search(
        r'<li class="error" id="verdict">\s*The bus is <strong>down</strong>: '
        r"the database does not answer: connection refused\.",
        page,
    )
    assert '<svg class="chart"' not in page


def test_dead_letters_are_grouped_by_handler_and_first_line_with_links(viewer, db):
    greet, other = "tests.greet", "tests.other"
    lookup = "builtins.LookupError: no template"
    for n in range(2):  # the same first line, then the traceback's
        finished(greet, "dead", minute_ago(3 - n), last_error=f"{lookup}\nline {n}")
    finished(greet, "dead", minute_ago(5), last_error=lookup)
    finished(greet, "dead", minute_ago(4), last_error=f"{lookup} either")  # not the same
    finished(greet, "dead", minute_ago(1), last_error="builtins.OSError: no voice")
    finished(other, "dead", minute_ago(4), last_error=lookup)
    finished(greet, "done", minute_ago(1), last_error=lookup)  # failed, then done

    response = viewer.get(DASHBOARD)

    groups = [(row["handler"], row["error"], row["count"]) for row in response.context["dead"]]
    assert groups == [
        (greet, lookup, 3),
        (greet, f"{lookup} either", 1),
        (greet, "builtins.OSError: no voice", 1),
        (other, lookup, 1),
    ]
    assert response.context["dead"][0]["latest"] == minute_ago(2)
    page = response.content.decode()
    links = re.findall(r'<a class="dead-group" href="([^"]+)">(\d+)</a>', page)
    assert [int(count) for _, count in links] == [3, 1, 1, 1]
    for (handler, error, _), (href, count) in zip(groups, links, strict=True):
        listed = viewer.get(unescape(href)).context["cl"]
        assert listed.result_count == int(count), href
        assert {row.handler for row in listed.result_list} == {handler}
        assert {row.last_error.split("\n")[0] for row in listed.result_list} == {error}
        assert [spec.title for spec in listed.filter_specs][-1] == "last error"  # shown in use


def test_workers_seen_lately_with_their_role_and_the_stale_ones_marked(viewer, db):
    now = timezone.now()
    for id_, seen, processed in [
        ("web-1:100", 10, 7),
        ("relay:web-1:101", 300, 0),
        ("consumer:web-2:5", 20, 3),
        ("web-3:9", 1800, 40),  # half an hour ago: not listed
    ]:
        WorkerBeat.objects.create(
            id=id_, role=id_.split(":")[0] if id_.count(":") == 2 else "worker",
            database="default", seen_at=now - timedelta(seconds=seen), processed=processed,
        )  # fmt: skip

    page = viewer.get(DASHBOARD).content.decode()

    rows = re.findall(r'<tr class="worker( stale)?">(.*?)</tr>', page, re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row, re.S) for _, row in rows]
    assert [(id_, role, database, processed) for id_, role, database, _, processed in cells] == [
        ("web-1:100", "worker", "default", "7"),
        ("consumer:web-2:5", "consumer", "default", "3"),
        ("relay:web-1:101", "relay", "default", "0"),
    ]
    assert [bool(stale) for stale, _ in rows] == [False, False, True]
    seen = [re.sub(r"<[^>]+>", "", cell[3]) for cell in cells]
    assert re.fullmatch(r"1\d s ago", seen[0]) and seen[2] == "5 min ago (stale)", seen
    assert "<strong>2</strong> workers seen in the last minute" in page


def test_with_none_running_the_dashboard_says_when_the_last_worker_was_seen(viewer, db):
    from messagebus.processes.worker import Worker

    assert "None: no worker, relay or consumer has said it is alive." in (
        viewer.get(DASHBOARD).content.decode()
    )
    worker = Worker(once=True)
    worker.run()  # says it is alive, then that it stopped

    page = viewer.get(DASHBOARD).content.decode()

    [said] = re.findall(r'<p class="last-seen">(.*?)</p>', page, re.S)
    said = re.sub(r"<[^>]+>", "", said)
    seen = r"[\d.]+ (ms|s|min)"
    assert re.fullmatch(
        rf"None running\. Last seen: worker {worker.id}, {seen} ago, when it stopped\.", said
    ), said


def test_the_dashboard_takes_a_few_queries_however_many_deliveries(
    viewer, django_assert_max_num_queries
):
    for ago in range(0, 60, 3):
        finished("tests.done", "done", minute_ago(ago))
        finished(f"tests.dead{ago}", "dead", minute_ago(ago), last_error=f"error {ago}")

    # health (in a transaction with a time limit, on PostgreSQL), the minutes, the dead, the workers
    with django_assert_max_num_queries(8):
        report = dashboard.report("default")

    assert len(bars(report["done_chart"])) == 20 and len(report["dead"]) == 20


def test_what_the_admin_says_goes_through_the_translation_catalog(
    admin_client, dead_delivery, monkeypatch
):
    from messagebus import admin as messagebus_admin

    def shout(text: str) -> str:  # as a catalog would: the placeholders kept
        return f"<<{text}>>"

    monkeypatch.setattr(messagebus_admin, "gettext", shout)
    monkeypatch.setattr(
        messagebus_admin, "ngettext", lambda one, many, n: shout(one if n == 1 else many)
    )
    row, _ = dead_delivery

    response = admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "discard", "_selected_action": [row.pk], "post": "yes"},
        follow=True,
    )

    assert messages_of(response) == [(SUCCESS, "<<Discarded 1 delivery.>>")]
