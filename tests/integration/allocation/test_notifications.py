import pytest

import messagebus
from allocation.commands import Allocate
from allocation.events import OutOfStock
from allocation.notifications import EmailNotifications
from messagebus.models import StoredEvent
from tests.factories import BatchFactory


def test_email_notification_sends_the_message_as_subject_and_body(mailoutbox):
    EmailNotifications().send("stock@example.com", "Out of stock for LAMP")

    [email] = mailoutbox
    assert email.to == ["stock@example.com"]
    assert email.subject == "Out of stock for LAMP"
    assert email.body == "Out of stock for LAMP"


def test_out_of_stock_is_emailed_to_the_stock_address(messagebus_deliver, mailoutbox, settings):
    settings.ALLOCATION_STOCK_EMAIL = "buyers@example.com"
    BatchFactory(product__sku="LAMP", purchased_quantity=5)

    messagebus.bus.handle(Allocate("o1", "LAMP", 10))

    assert [(m.subject, m.to) for m in mailoutbox] == [
        ("Out of stock for LAMP", ["buyers@example.com"])
    ]


@pytest.mark.django_db
def test_nothing_is_sent_before_the_command_commits(notifications, messagebus_capture):
    BatchFactory(product__sku="CURTAINS", purchased_quantity=1)

    assert messagebus.bus.handle(Allocate("o1", "CURTAINS", 10)) is None

    # Stored with the command's transaction, which the test never commits:
    assert StoredEvent.objects.get().type == "allocation.OutOfStock"
    messagebus_capture.assert_not_published(OutOfStock)
    assert notifications.sent == []
