"""``messagebus prune`` deletes the records of what ended before its cutoff, and keeps what
is still under way."""

import datetime as dt
import uuid

import pytest
from django.core.management import call_command
from django.utils import timezone

from messagebus.models import InboxMessage, ProcessEntry, ProcessInstance, WorkerBeat

pytestmark = pytest.mark.django_db

Status = ProcessInstance.Status


@pytest.fixture
def records():
    long_ago, lately = timezone.now() - dt.timedelta(days=40), timezone.now()
    for n, at in enumerate([long_ago, long_ago, lately]):
        InboxMessage.objects.create(
            message_id=f"m{n}", channel="c", status="handled", body="{}", received_at=at
        )
    for key, status, finished in [
        ("finished-long-ago", Status.FINISHED, long_ago),
        ("compensated-long-ago", Status.COMPENSATED, long_ago),
        ("finished-lately", Status.FINISHED, lately),
        ("running-since-long-ago", Status.RUNNING, None),
        ("compensating-since-long-ago", Status.COMPENSATING, None),
    ]:
        process = ProcessInstance.objects.create(
            name="order", key=key, status=status, started_at=long_ago, updated_at=long_ago,
            finished_at=finished,
        )  # fmt: skip
        for kind in ["handled", "step"]:
            ProcessEntry.objects.create(
                process=process, kind=kind, message_type="t", message_id=uuid.uuid4(),
                outcome="done", at=long_ago,
            )  # fmt: skip
    WorkerBeat.objects.create(id="worker:gone:1", database="default", seen_at=long_ago)
    WorkerBeat.objects.create(
        id="relay:gone:2", role="relay", database="default", seen_at=long_ago, stopped_at=long_ago
    )
    WorkerBeat.objects.create(id="worker:here:3", database="default", seen_at=lately)


def test_a_dry_run_counts_the_records_that_ended_before_the_cutoff_and_deletes_none(
    records, capsys
):
    call_command("messagebus", "prune", "--days", "30", "--dry-run")

    assert capsys.readouterr().out.splitlines()[1] == (
        "Would delete 2 inbox messages, 2 ended process manager instances and "
        "2 worker heartbeats from before then."
    )
    assert InboxMessage.objects.count() == 3
    assert ProcessInstance.objects.count() == 5 and ProcessEntry.objects.count() == 10
    assert WorkerBeat.objects.count() == 3


def test_prune_deletes_them_and_keeps_what_is_under_way_or_recent(records, capsys):
    call_command("messagebus", "prune", "--days", "30")

    assert capsys.readouterr().out.splitlines()[1] == (
        "Deleted 2 inbox messages, 2 ended process manager instances and "
        "2 worker heartbeats from before then."
    )
    assert list(InboxMessage.objects.values_list("message_id", flat=True)) == ["m2"]
    left = set(ProcessInstance.objects.values_list("key", flat=True))
    assert left == {"finished-lately", "running-since-long-ago", "compensating-since-long-ago"}
    assert set(ProcessEntry.objects.values_list("process__key", flat=True)) == left
    assert ProcessEntry.objects.count() == 6  # the history of those kept, whole
    assert list(WorkerBeat.objects.values_list("id", flat=True)) == ["worker:here:3"]

    call_command("messagebus", "prune", "--days", "30")
    assert capsys.readouterr().out.splitlines()[1:] == []  # nothing more to say


def test_a_shorter_cutoff_reaches_the_recent_ones_too(records, capsys):
    InboxMessage.objects.filter(message_id="m2").update(
        received_at=timezone.now() - dt.timedelta(days=2)
    )

    call_command("messagebus", "prune", "--days", "1")

    assert "Deleted 3 inbox messages, 2 ended process manager instances" in (
        capsys.readouterr().out
    )
    assert not InboxMessage.objects.exists()
