"""The outbox in the admin: read-only, filterable, with retry and discard."""

import pytest
from django.urls import reverse

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
    assert "Requeued 1 delivery." in response.content.decode()
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


def test_staff_without_permission_cannot_retry(client, django_user_model, dead_delivery):
    from django.contrib.auth.models import Permission

    row, state = dead_delivery
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client.force_login(user)
    state["broken"] = False
    client.post(
        reverse("admin:messagebus_delivery_changelist"),
        {"action": "retry_now", "_selected_action": [row.pk]},
    )
    row.refresh_from_db()
    assert row.status == "dead"
