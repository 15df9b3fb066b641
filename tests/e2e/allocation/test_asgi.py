"""Under uvicorn, a sync view's command runs in Django's thread for sync code, and the
async handlers of its events are awaited on the server's own event loop."""

import json
import urllib.request

from messagebus.models import Delivery
from tests.receiver import Receiver


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request) as response:
        return response.status


def test_an_allocation_over_asgi_reaches_the_webhook(uvicorn):
    with Receiver() as hook:
        url = uvicorn({"ALLOCATION_WEBHOOK_URLS": hook.url})
        assert post(f"{url}/add_batch", {"ref": "b1", "sku": "LAMP", "qty": 5, "eta": None}) == 201
        assert post(f"{url}/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 2}) == 202

    [got] = hook.received
    assert got.body == {"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"}
    webhook = Delivery.objects.get(handler="allocation.handlers.post_allocation")
    assert webhook.status == Delivery.Status.DONE
