import messagebus

from .commands import PlaceOrder
from .events import OrderPlaced
from .mail import Mailer
from .models import Order


@messagebus.handler
def place_order(cmd: PlaceOrder, uow: messagebus.UnitOfWork) -> int:
    order = Order.objects.create(orderid=cmd.orderid, sku=cmd.sku, qty=cmd.qty)
    order.place()
    return order.pk


@messagebus.handler
def send_confirmation(event: OrderPlaced, mailer: Mailer) -> None:
    mailer.send_confirmation(event.orderid)
