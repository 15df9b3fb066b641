"""One validation for a command, wherever it comes from: the rules declared with
ChangeBatchQuantity's fields refuse a quantity of 0 or less at every door."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from allocation import rules
from allocation.api.exceptions import exception_handler
from allocation.api.serializers import BatchQuantityInputSerializer
from allocation.commands import Allocate, ChangeBatchQuantity, CreateBatch
from allocation.exceptions import InvalidCommand
from allocation.forms import ChangeBatchQuantityForm
from allocation.models import Batch
from messagebus.external.inbox import receive
from messagebus.external.transports import Verdict
from messagebus.models import InboxMessage
from tests.factories import BatchFactory

pytestmark = pytest.mark.usefixtures("messagebus_deliver")
BOUNDS = "is not between 1 and 1000000"


@pytest.mark.parametrize("qty", [-1, 0, 5_000_000])
def test_the_domain_never_sees_a_quantity_out_of_bounds(qty):
    with pytest.raises(
        InvalidCommand, match=rf"^Invalid ChangeBatchQuantity: qty: {qty} {BOUNDS}$"
    ):
        ChangeBatchQuantity(ref="b1", qty=qty)


@pytest.mark.parametrize(
    ("build", "errors"),
    [
        (lambda: Allocate(orderid="o 1", sku="LAMP", qty=True), {"orderid", "qty"}),
        (lambda: CreateBatch(ref="b1", sku="x" * 256, qty=3, eta="2031-01-01"), {"sku", "eta"}),
        (lambda: ChangeBatchQuantity(ref=7, qty=1.5), {"ref", "qty"}),
    ],
)
def test_each_field_that_breaks_its_rule_is_named(build, errors):
    with pytest.raises(InvalidCommand) as caught:
        build()
    assert set(caught.value.errors) == errors


def test_each_door_builds_its_fields_from_the_same_rule():
    rule = rules.rule(ChangeBatchQuantity, "qty")
    api = BatchQuantityInputSerializer().fields["qty"]
    form = ChangeBatchQuantityForm(batch=Batch(purchased_quantity=1)).fields["qty"]
    assert (api.min_value, api.max_value) == (rule.minimum, rule.maximum)
    assert (form.min_value, form.max_value) == (rule.minimum, rule.maximum)


@pytest.mark.parametrize("qty", [-1, 0])
def test_the_api_answers_400(api, qty):
    BatchFactory(reference="b1", purchased_quantity=10)
    response = api.patch("/api/batches/b1", {"qty": qty})
    assert response.status_code == 400
    assert response.json() == {"qty": ["Ensure this value is greater than or equal to 1."]}


def test_a_command_the_rules_refuse_is_a_400_naming_the_fields_wherever_it_is_built():
    response = exception_handler(InvalidCommand("Allocate", {"qty": ["-1 is not"]}), {})
    assert (response.status_code, response.data) == (400, {"qty": ["-1 is not"]})


@pytest.mark.parametrize("qty", ["-1", "0"])
def test_the_management_command_raises_a_command_error(qty):
    BatchFactory(reference="b1", purchased_quantity=10)
    with pytest.raises(CommandError, match=f"argument qty: {qty} {BOUNDS}"):
        call_command("change_batch_quantity", "b1", qty, stdout=StringIO())
    assert Batch.objects.get().purchased_quantity == 10


@pytest.mark.parametrize("qty", ["-1", "0"])
def test_the_admin_shows_a_form_error(admin_client, qty):
    batch = BatchFactory(reference="b1", purchased_quantity=10)
    response = admin_client.post(f"/admin/allocation/batch/{batch.pk}/change/", {"qty": qty})
    assert response.status_code == 200
    assert response.context["form"].errors == {
        "qty": ["Ensure this value is greater than or equal to 1."]
    }
    assert Batch.objects.get().purchased_quantity == 10


@pytest.mark.parametrize("qty", [-1, 0])
def test_the_consumer_dead_letters_it_with_the_reason(qty):
    BatchFactory(reference="b1", purchased_quantity=10)
    body = json.dumps({"batchref": "b1", "qty": qty}).encode()
    settled = receive("change_batch_quantity", body, "m-1")
    assert settled.verdict is Verdict.DEAD
    assert settled.reason.endswith(f"Invalid ChangeBatchQuantity: qty: {qty} {BOUNDS}")
    assert InboxMessage.objects.get().reason == settled.reason
    assert Batch.objects.get().purchased_quantity == 10
