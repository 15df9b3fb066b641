import messagebus
from orders.commands import PlaceOrder
from orders.events import OrderPlaced


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_confirmation(self, orderid: str) -> None:
        self.sent.append(orderid)


def test_placing_an_order_sends_a_confirmation(
    messagebus_deliver, messagebus_capture, messagebus_dependencies
):
    mailer = FakeMailer()
    messagebus_dependencies(mailer=mailer)  # undone after the test
    messagebus.bus.handle(PlaceOrder("o1", "LAMP", 1))
    messagebus_capture.assert_published(OrderPlaced, orderid="o1")
    messagebus_capture.assert_handled(PlaceOrder, sku="LAMP")
    assert mailer.sent == ["o1"]
