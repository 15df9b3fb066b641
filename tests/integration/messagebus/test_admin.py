"""The outbox in the admin: read-only, filterable, with retry and discard."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import ERROR, INFO, SUCCESS, WARNING, get_messages
from django.urls import reverse
from django.utils.html import escape

import messagebus
from messagebus.models import Delivery, StoredEvent
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


def test_discard_keeps_the_row_and_never_runs_it(admin_client, dead_delivery):
    row, state = dead_delivery
    admin_client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "discard", "_selected_action": [row.pk]},
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
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "MAX_DELIVERIES": 5, "REDELIVERY_DELAY": 30}

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


def test_retry_now_says_it_is_dead_and_why(admin_client, dead_delivery):
    row, _ = dead_delivery

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


def test_discard_button_discards_it(admin_client, dead_delivery):
    row, _ = dead_delivery

    response = admin_client.post(button(row, "discard"))

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
    gone = Delivery.objects.create(event=row.event, handler="tests.gone", status="dead")

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
        "status",
        "runs",
        "error",
        "event_type",
        "handler_name",
        "created_at",
    ]
    assert list(cl.list_display_links) == ["id"]
    assert [spec.title for spec in cl.filter_specs] == ["status", "type", "handler"]
    short = "&lt;locals&gt;.<wbr>greet"  # the last two dotted parts, the full name on hover
    assert f'<span title="{escape(row.handler)}">{short}</span>' in response.content.decode()


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
