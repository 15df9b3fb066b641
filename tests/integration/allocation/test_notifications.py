import pytest

import messagebus
from allocation.commands import Allocate
from allocation.notifications import EmailNotifications
from tests.factories import BatchFactory


def test_email_notification_sends_the_message_as_subject_and_body(mailoutbox):
    EmailNotifications().send("stock@example.com", "Out of stock for LAMP")

    [email] = mailoutbox
    assert email.to == ["stock@example.com"]
    assert email.subject == "Out of stock for LAMP"
    assert email.body == "Out of stock for LAMP"


@pytest.mark.django_db
def test_out_of_stock_is_emailed_to_the_stock_address(
    mailoutbox, settings, django_capture_on_commit_callbacks
):
    settings.ALLOCATION_STOCK_EMAIL = "buyers@example.com"
    BatchFactory(product__sku="LAMP", purchased_quantity=5)

    with django_capture_on_commit_callbacks(execute=True):
        messagebus.bus.handle(Allocate("o1", "LAMP", 10))

    assert [(m.subject, m.to) for m in mailoutbox] == [
        ("Out of stock for LAMP", ["buyers@example.com"])
    ]
