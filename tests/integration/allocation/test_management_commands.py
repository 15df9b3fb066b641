from datetime import date
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from allocation.events import Allocated
from allocation.models import AllocationView, Batch, OrderLine, Product
from tests.factories import BatchFactory

# Each command's event handlers run as the command ends, as they would after its commit.
pytestmark = pytest.mark.usefixtures("messagebus_deliver")


def run(*args: str) -> str:
    """Run a management command; its output."""
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_batch():
    assert run("create_batch", "b1", "LAMP", "20", "--eta", "2031-01-02") == (
        "Created batch b1: 20 x LAMP\n"
    )

    batch = Batch.objects.get()
    assert (batch.reference, batch.sku, batch.purchased_quantity, batch.eta) == (
        "b1",
        "LAMP",
        20,
        date(2031, 1, 2),
    )


def test_create_batch_in_stock():
    run("create_batch", "b1", "LAMP", "20")

    assert Batch.objects.get().eta is None


def test_create_batch_with_a_taken_reference():
    BatchFactory(reference="b1")

    with pytest.raises(CommandError, match=r"^Batch b1 already exists$"):
        run("create_batch", "b1", "LAMP", "20")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["b1", "LAMP", "0"], "argument qty: 0 is not between 1 and 1000000"),
        (["b1", "LAMP", "-3"], "argument qty: -3 is not between 1 and 1000000"),
        (["b1", "LAMP", "2.5"], "argument qty: '2.5' is not a whole number"),
        (["b1", "LAMP", "20", "--eta", "2031-02-30"], "argument --eta: '2031-02-30' is not a date"),
        (["b/1", "LAMP", "20"], "argument ref: 'b/1': Use only letters"),
        (["b1", "x" * 256, "20"], "argument sku: at most 255 characters"),
        (["b1", "LAMP"], "the following arguments are required: qty"),
    ],
)
def test_create_batch_with_invalid_arguments(args, error):
    with pytest.raises(CommandError, match=error):
        run("create_batch", *args)
    assert not Batch.objects.exists()


def test_allocate_prints_the_batch():
    BatchFactory(reference="b1", product__sku="LAMP")

    assert run("allocate", "o1", "LAMP", "5") == "b1\n"

    assert OrderLine.objects.get().orderid == "o1"
    assert AllocationView.objects.get().batchref == "b1"


def test_allocate_fails_when_out_of_stock(notifications):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=4)

    with pytest.raises(CommandError, match=r"^Out of stock for LAMP$"):
        run("allocate", "o1", "LAMP", "5")

    assert not OrderLine.objects.exists()
    assert notifications.sent[0][1] == "Out of stock for LAMP"


def test_allocate_the_same_line_with_another_quantity():
    BatchFactory(reference="b1", product__sku="LAMP")
    run("allocate", "o1", "LAMP", "5")

    with pytest.raises(
        CommandError, match=r"^Order o1 already has 5 x LAMP allocated \(batch b1\)$"
    ):
        run("allocate", "o1", "LAMP", "6")

    assert OrderLine.objects.get().qty == 5


@pytest.mark.parametrize("args", [[".", "LAMP", "5"], ["o1", "..", "5"]])
def test_allocate_with_a_dot_name(args):
    with pytest.raises(CommandError, match=r"'\.' and '\.\.' cannot be identifiers"):
        run("allocate", *args)


def test_allocate_unknown_sku():
    with pytest.raises(CommandError, match=r"^Invalid sku LAMP$"):
        run("allocate", "o1", "LAMP", "5")


def test_allocate_with_an_invalid_quantity():
    with pytest.raises(CommandError, match="argument qty: 'lots' is not a whole number"):
        run("allocate", "o1", "LAMP", "lots")


def test_change_batch_quantity():
    batch = BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=20)
    BatchFactory(reference="b2", product__sku="LAMP", eta=date(2031, 1, 1))
    run("allocate", "o1", "LAMP", "15")

    assert run("change_batch_quantity", "b1", "10") == "Batch b1 now holds 10\n"

    batch.refresh_from_db()
    assert batch.purchased_quantity == 10
    assert OrderLine.objects.get().batch.reference == "b2"


def test_change_quantity_of_unknown_batch():
    with pytest.raises(CommandError, match=r"^Unknown batch b1$"):
        run("change_batch_quantity", "b1", "10")


def test_change_batch_quantity_to_zero():
    with pytest.raises(CommandError, match="argument qty: 0 is not between"):
        run("change_batch_quantity", "b1", "0")


def test_load_demo_data_twice_loads_it_once(messagebus_capture):
    run("load_demo_data")
    counts = (Product.objects.count(), Batch.objects.count(), OrderLine.objects.count())

    run("load_demo_data")

    assert (Product.objects.count(), Batch.objects.count(), OrderLine.objects.count()) == counts
    assert counts[0] >= 3 and counts[1] >= 5 and counts[2] >= 4
    assert AllocationView.objects.count() == counts[2]
    assert len(messagebus_capture.published(Allocated)) == counts[2]  # all by the first run
