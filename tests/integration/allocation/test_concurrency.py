"""Concurrent allocations against one product, on PostgreSQL or MariaDB, with real threads."""

import threading
from collections import Counter

import pytest
from django.db import connection

import messagebus
from allocation.commands import Allocate
from allocation.models import AllocationView, Batch, OrderLine, Product
from tests.conftest import server_database
from tests.factories import BatchFactory

pytestmark = [server_database, pytest.mark.django_db(transaction=True)]

THREADS = 20


def run_together(count: int, target) -> list:
    """Call ``target(i)`` in ``count`` threads released at once; their results or errors."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_allocations_fill_a_batch_exactly(notifications):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=10)

    results = run_together(
        THREADS, lambda i: messagebus.bus.handle(Allocate(f"order-{i}", "LAMP", 1))
    )

    assert Counter(results) == {"b1": 10, None: 10}
    assert Product.objects.get(sku="LAMP").version_number == 10
    assert Batch.objects.with_quantities().get(reference="b1").available == 0
    assert OrderLine.objects.count() == 10
    assert AllocationView.objects.count() == 10
    assert len(notifications.sent) == 10


def test_concurrent_repeats_of_one_line_allocate_it_once(notifications):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=100)

    results = run_together(THREADS, lambda i: messagebus.bus.handle(Allocate("order", "LAMP", 3)))

    assert results == ["b1"] * THREADS
    assert Product.objects.get(sku="LAMP").version_number == 1
    assert Batch.objects.with_quantities().get(reference="b1").available == 97
