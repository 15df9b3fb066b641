"""Django's tasks on the outbox: the django.tasks surface, and the bus's delivery of them."""

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connections, transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from messagebus.models import Delivery, StoredEvent, WorkerBeat
from messagebus.processes.worker import Worker
from messagebus.task_backend import OutboxBackend
from messagebus.task_backend.compat import (
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_finished,
    task_started,
)
from messagebus.testing import run_due
from tests.busapp import jobs
from tests.busapp.models import Entry
from tests.conftest import ROOT, database_url, server_database

try:  # Django 6.0 and later
    from django.tasks import default_task_backend, task, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultMismatch
except ImportError:
    from django_tasks import default_task_backend, task, task_backends
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultMismatch

WORKER = {**settings.MESSAGEBUS, "EXECUTOR": "worker"}  # nothing runs here: workers do


def in_a_minute() -> dt.datetime:
    return timezone.now() + dt.timedelta(minutes=1)


def work(using: str = "default", **options) -> int:
    """A worker's run until nothing is due, in this process."""
    return Worker(once=True, using=using, **options).run()


# The backend's abilities and checks, as django.tasks states them.


def test_the_backend_says_what_it_supports():
    backend = task_backends["default"]
    assert isinstance(backend, OutboxBackend)
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_after": dt.datetime(2030, 1, 1)}, "run_after must be an aware datetime."),
        ({"priority": 101}, "priority must be a whole number between -100 and 100."),
        ({"priority": -101}, "priority must be a whole number between -100 and 100."),
        ({"queue_name": "elsewhere"}, "Queue 'elsewhere' is not valid for backend."),
    ],
)
def test_invalid_tasks_are_refused_in_djangos_words(change, message):
    with pytest.raises(InvalidTask, match=f"^{re.escape(message)}$"):
        jobs.noop.using(**change)


def test_a_task_must_be_a_module_level_function_that_takes_context_first():
    with pytest.raises(
        InvalidTask, match=re.escape("Task function must be defined at a module level.")
    ):
        task()(lambda: None)
    with pytest.raises(InvalidTask, match="does not have a first argument of 'context'"):
        task(takes_context=True)(jobs.meaning_of_life.func)


def test_a_queue_named_in_queues_is_valid():
    with override_settings(TASKS={"default": {
        "BACKEND": "messagebus.task_backend.OutboxBackend", "QUEUES": ["default", "emails"],
    }}):  # fmt: skip
        assert jobs.noop.using(queue_name="emails").queue_name == "emails"


def test_arguments_must_be_json(db):
    with pytest.raises(TypeError, match="Unsupported type"):
        jobs.noop.enqueue(dt.datetime.now())
    assert not StoredEvent.objects.exists()


# Enqueued in a transaction: stored with it, readable JSON, read back as it was.


def test_an_enqueued_task_is_ready_and_read_back_equal(db):
    result = jobs.noop.enqueue(1, (2, 3), two={"x": 3})  # the test's transaction: not run
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs) == ([1, [2, 3]], {"two": {"x": 3}})
    assert result.task == jobs.noop and result.backend == "default"
    assert jobs.noop.get_result(result.id) == result
    assert default_task_backend.get_result(result.id) == result
    event = StoredEvent.objects.get()
    assert str(event.id) == result.id and event.type == "messagebus.TaskEnqueued"
    assert event.payload == {
        "task": "tests.busapp.jobs.noop", "arguments": {"args": [1, [2, 3]],
        "kwargs": {"two": {"x": 3}}}, "backend": "default", "database": "default",
        "queue_name": "default", "priority": 0, "run_after": None,
    }  # fmt: skip


def test_a_result_read_back_keeps_the_tasks_priority_queue_and_run_after(db):
    when = in_a_minute()
    later = jobs.noop.using(priority=7, run_after=when)
    result = later.enqueue()
    again = jobs.noop.get_result(result.id)
    assert again.task == later and (again.task.priority, again.task.run_after) == (7, when)
    row = Delivery.objects.get()
    assert (row.priority, row.queue, row.next_attempt_at) == (7, "default", when)


def test_a_missing_or_mismatched_result_is_an_error(db):
    for missing in ("123", str(uuid.uuid4()), f"nowhere:{uuid.uuid4()}"):
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(missing)
    result = jobs.meaning_of_life.enqueue()
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        jobs.noop.get_result(result.id)


def test_aenqueue_and_aget_result(transactional_db):
    async def enqueue_and_read():
        result = await jobs.noop.aenqueue(5)
        return result, await jobs.noop.aget_result(result.id)

    result, read = async_to_sync(enqueue_and_read)()
    assert read.id == result.id and read.args == [5]
    assert read.status == TaskResultStatus.SUCCESSFUL  # committed at once, then run inline


def test_rolled_back_the_task_never_runs(transactional_db):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        result = jobs.record.enqueue("rolled back")
        1 / 0  # noqa: B018
    assert not Delivery.objects.exists() and not StoredEvent.objects.exists()
    work()
    assert not Entry.objects.exists()
    with pytest.raises(TaskResultDoesNotExist):
        jobs.record.get_result(result.id)


def test_inline_a_task_runs_after_the_commit_not_before(transactional_db):
    with transaction.atomic():
        result = jobs.record.enqueue("inline", 3)
        assert not Entry.objects.exists()
    entry = Entry.objects.get()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == entry.pk
    assert result.attempts == 1 and result.worker_ids == [f"{socket.gethostname()}:{os.getpid()}"]
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at and not result.errors


# Committed, then run by a worker: the handlers' policy.


def test_committed_a_worker_runs_it_successfully_with_its_return_value(transactional_db):
    with override_settings(MESSAGEBUS=WORKER):
        result = jobs.meaning_of_life.enqueue()
        assert jobs.meaning_of_life.get_result(result.id).status == TaskResultStatus.READY
        assert work() == 1
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42
    assert result.is_finished and result.attempts == 1


def test_a_worker_s_batch_keeps_each_task_s_own_return_value(transactional_db):
    with override_settings(MESSAGEBUS=WORKER):
        enqueued = [jobs.get_task_id.enqueue() for _ in range(5)]
        assert work() == 5
    for result in enqueued:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == result.id
        assert result.started_at <= result.finished_at and result.worker_ids


def test_an_async_task_runs_on_the_async_path(transactional_db):
    with override_settings(MESSAGEBUS=WORKER):
        result = jobs.ameaning_of_life.enqueue()
        assert Delivery.objects.get().handler == "messagebus.task_backend.arun"
        work()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42


def test_a_raising_task_fails_after_the_retry_policy_with_its_error(transactional_db):
    policy = {**WORKER, "RETRY_ATTEMPTS": 3, "MAX_DELIVERIES": 1}
    with override_settings(MESSAGEBUS=policy):
        result = jobs.failing.enqueue()
        assert run_due() == 3
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.attempts == 3
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert len(result.errors) == 3  # one per failed attempt, oldest first
    for error in result.errors:
        assert error.exception_class is ValueError
        assert error.traceback.endswith("ValueError: This task failed due to ValueError\n")
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert Delivery.objects.get().status == Delivery.Status.DEAD


@pytest.fixture
def signalled():
    """What task_started and task_finished were sent with: (signal, sender, status as
    sent, status read back then (finished only), return value, errors), in order."""
    sent = []

    def receiver(signal, sender, task_result, **kwargs):
        name = "started" if signal is task_started else "finished"
        now = None
        if signal is task_finished:  # sent once what it says is committed
            now = task_result.task.get_backend().get_result(task_result.id).status
        value = (
            task_result.return_value if task_result.is_finished and not task_result.errors else None
        )
        errors = [e.exception_class for e in task_result.errors]
        sent.append((name, sender, task_result.status, now, value, errors))

    task_started.connect(receiver)
    task_finished.connect(receiver)
    yield sent
    task_started.disconnect(receiver)
    task_finished.disconnect(receiver)


def test_a_task_run_sends_started_then_finished_once_it_committed(transactional_db, signalled):
    with override_settings(MESSAGEBUS=WORKER):
        jobs.meaning_of_life.enqueue()
        work()

    RUNNING, SUCCESSFUL = TaskResultStatus.RUNNING, TaskResultStatus.SUCCESSFUL
    assert signalled == [
        ("started", OutboxBackend, RUNNING, None, None, []),
        ("finished", OutboxBackend, SUCCESSFUL, SUCCESSFUL, 42, []),  # read back: committed
    ]


def test_an_async_task_sends_started_then_finished(transactional_db, signalled):
    with override_settings(MESSAGEBUS=WORKER):
        jobs.ameaning_of_life.enqueue()
        work()

    assert [(name, status, value) for name, _, status, _, value, _ in signalled] == [
        ("started", TaskResultStatus.RUNNING, None),
        ("finished", TaskResultStatus.SUCCESSFUL, 42),
    ]


def test_a_task_that_dies_sends_finished_once_with_each_attempts_error(transactional_db, signalled):
    with override_settings(MESSAGEBUS={**WORKER, "RETRY_ATTEMPTS": 3, "MAX_DELIVERIES": 1}):
        jobs.failing.enqueue()
        run_due()

    started = [entry for entry in signalled if entry[0] == "started"]
    assert [errors for *_, errors in started] == [[], [ValueError], [ValueError] * 2]
    FAILED = TaskResultStatus.FAILED
    assert signalled[3:] == [("finished", OutboxBackend, FAILED, FAILED, None, [ValueError] * 3)]


def test_a_task_retried_sees_its_attempt_in_its_context(transactional_db):
    with override_settings(MESSAGEBUS={**WORKER, "RETRY_ATTEMPTS": 3}):
        result = jobs.fails_until.enqueue(3)
        run_due()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert result.attempts == 3
    assert [e.exception_class for e in result.errors] == [ConnectionError, ConnectionError]


def test_a_task_gets_its_result_in_its_context(transactional_db):
    result = jobs.get_task_id.enqueue()
    assert jobs.get_task_id.get_result(result.id).return_value == result.id


def test_a_return_value_json_cannot_hold_fails_at_once(transactional_db):
    with override_settings(MESSAGEBUS={**WORKER, "RETRY_ATTEMPTS": 3}):
        result = jobs.complex_return_value.enqueue()
        run_due()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.attempts == 1
    assert issubclass(result.errors[0].exception_class, TypeError)
    assert "Unsupported type" in result.errors[0].traceback


def test_a_task_does_not_run_before_its_run_after(transactional_db):
    result = jobs.record.using(run_after=in_a_minute()).enqueue("later")  # inline: not yet
    assert work() == 0
    assert not Entry.objects.exists()
    assert jobs.record.get_result(result.id).status == TaskResultStatus.READY
    Delivery.objects.update(next_attempt_at=timezone.now())  # a minute later
    assert work() == 1
    assert Entry.objects.get().account == "later"


def test_a_worker_limited_to_queues_runs_only_theirs(transactional_db):
    with override_settings(
        MESSAGEBUS=WORKER,
        TASKS={"default": {"BACKEND": "messagebus.task_backend.OutboxBackend",
                           "QUEUES": ["default", "emails", "reports"]}},
    ):  # fmt: skip
        jobs.record.using(queue_name="emails").enqueue("email")
        jobs.record.using(queue_name="reports").enqueue("report")
        jobs.record.enqueue("default")
        assert work(queues=["emails"]) == 1
        assert list(Entry.objects.values_list("account", flat=True)) == ["email"]
        assert work(queues=["default", "reports"]) == 2


def test_a_worker_runs_higher_priorities_first(transactional_db):
    with override_settings(MESSAGEBUS=WORKER):
        for priority in (-5, 0, 10, 0, 3):
            jobs.record.using(priority=priority).enqueue("p", priority)
        work(batch=1)
    assert list(Entry.objects.order_by("pk").values_list("amount", flat=True)) == [
        10, 3, 0, 0, -5
    ]  # fmt: skip


# On another database: stored in its transaction, run from it.


@pytest.mark.django_db(databases=["default", "replica"], transaction=True)
def test_a_task_enqueued_on_the_second_database_runs_from_it():
    with override_settings(MESSAGEBUS=WORKER):
        with transaction.atomic(using="replica"):
            result = jobs.meaning_of_life.enqueue()
            assert not connections["default"].in_atomic_block
        row = StoredEvent.objects.using("replica").get()
        assert row.payload["database"] == "replica" and result.id == f"replica:{row.id}"
        with pytest.raises(ZeroDivisionError), transaction.atomic(using="replica"):
            jobs.meaning_of_life.enqueue()
            1 / 0  # noqa: B018
        assert work(using="replica") == 1
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42


# In the admin: a failing task is a dead delivery, run again with its button.


def test_the_admin_shows_a_failing_task_dead_with_a_retry_button(admin_client, transactional_db):
    once = {**settings.MESSAGEBUS, "RETRY_ATTEMPTS": 1, "MAX_DELIVERIES": 1}
    with override_settings(MESSAGEBUS=once):
        result = jobs.fails_until.enqueue(2)  # inline: its one call fails, and it is dead
        row = Delivery.objects.get()
        assert row.status == Delivery.Status.DEAD
        assert jobs.fails_until.get_result(result.id).status == TaskResultStatus.FAILED

        page = admin_client.get(reverse("admin:messagebus_delivery_change", args=[row.pk]))
        html = page.content.decode()
        assert "tests.busapp.jobs.fails_until" in html and "ConnectionError" in html
        retry = reverse("admin:messagebus_delivery_retry", args=[row.pk])
        assert re.search(rf'<form method="post" action="{retry}">.*?Retry now', html, re.S)

        admin_client.post(retry)  # runs it again, inline: its second attempt succeeds
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 2


@server_database
def test_three_workers_run_higher_priorities_first(transactional_db):
    env = {**os.environ, "DATABASE_URL": database_url(), "BUSAPP_TASK_SLEEP": "0.05"}
    command = [
        sys.executable, str(ROOT / "manage.py"), "messagebus", "worker",
        "--batch", "1", "--interval", "0.05",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while WorkerBeat.objects.running().count() < 3:  # all three waiting
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        with override_settings(MESSAGEBUS=WORKER), transaction.atomic():
            for _ in range(12):  # stored interleaved: the order stored is not the order run
                for priority in (-10, 0, 10):
                    jobs.record.using(priority=priority).enqueue(f"p{priority}", priority)
        while Delivery.objects.exclude(status=Delivery.Status.DONE).exists():
            assert time.monotonic() < deadline, "tasks were left undone"
            time.sleep(0.05)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
    assert [w.returncode for w in workers] == [0, 0, 0], [w.stderr.read() for w in workers]
    ran = list(Entry.objects.order_by("pk").values_list("amount", "note"))
    started = [amount for amount, _ in ran]  # each task's entry, written as it started
    assert len(started) == 36
    assert max(i for i, p in enumerate(started) if p == 10) < started.index(-10)
    assert started[:3] == [10, 10, 10] and started[-3:] == [-10, -10, -10]
    assert len({note for _, note in ran}) == 3  # all three workers took part
