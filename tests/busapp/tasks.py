"""A plain Celery task writing what record_ping writes: bench/bench_celery.py's baseline."""

from celery import shared_task

from .models import Entry


@shared_task(name="busapp.record_ping", ignore_result=True)
def record_ping(n: int) -> None:
    Entry.objects.create(account="ping", amount=n)
