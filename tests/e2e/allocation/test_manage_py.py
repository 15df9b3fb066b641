"""The management commands as a shell runs them: ``python manage.py ...`` in a new process."""

from allocation.models import AllocationView, OrderLine
from tests.factories import BatchFactory


def test_allocate_prints_the_batch_and_exits_zero(manage):
    BatchFactory(reference="b1", product__sku="LAMP")

    result = manage("allocate", "o1", "LAMP", "3")

    assert (result.returncode, result.stdout) == (0, "b1\n")
    assert OrderLine.objects.get().batch.reference == "b1"
    assert AllocationView.objects.get().batchref == "b1"  # its event handler ran too


def test_a_rejected_command_exits_one_with_the_reason(manage):
    result = manage("allocate", "o1", "NOPE", "3")

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "CommandError: Invalid sku NOPE"
    assert result.stdout == ""


def test_an_invalid_argument_exits_two_with_the_usage(manage):
    result = manage("allocate", "o1", "LAMP", "lots")

    assert result.returncode == 2
    assert "usage: manage.py allocate" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "manage.py allocate: error: argument qty: 'lots' is not a whole number"
    )
    assert not OrderLine.objects.exists()
