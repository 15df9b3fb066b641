"""The outbox: each event stored once, one delivery per (event, handler)."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

DEFAULT_QUEUE = "default"  # django.tasks' default queue name; every event's deliveries
KEY_LENGTH = 255  # a concurrency key is kept to its first this many characters


class StoredEvent(models.Model):
    id = models.UUIDField(primary_key=True, help_text="The event's message_id.")
    type = models.CharField(max_length=200)
    payload = models.JSONField()
    correlation_id = models.UUIDField(db_index=True)
    causation_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    trace_context = models.JSONField(
        null=True, blank=True, help_text="The trace it was stored in (W3C traceparent)."
    )

    class Meta:
        verbose_name = "event"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


def due(now: dt.datetime) -> Q:
    """A delivery that is due: pending, not leased to a runner, its time has come, and
    its handler is not paused."""
    return Q(status="pending", lease_until__isnull=True, next_attempt_at__lte=now) & ~paused()


def paused() -> Q:
    """A delivery whose handler is paused (but for a circuit breaker's probe)."""
    pauses = Pause.objects.filter(handler=OuterRef("handler")).exclude(probe=OuterRef("event_id"))
    return Q(Exists(pauses))


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    def pending(self) -> DeliveryQuerySet:
        return self.filter(status=Delivery.Status.PENDING)

    def due(self, now: dt.datetime | None = None) -> DeliveryQuerySet:
        return self.filter(due(now or timezone.now()))

    def leased(self) -> DeliveryQuerySet:
        return self.pending().filter(lease_until__isnull=False)

    def dead(self) -> DeliveryQuerySet:
        return self.filter(status=Delivery.Status.DEAD)

    def retryable(self) -> DeliveryQuerySet:
        """Deliveries that have not finished: dead, or pending."""
        return self.filter(status__in=Delivery.UNFINISHED)

    def finished_before(self, when: dt.datetime) -> DeliveryQuerySet:
        return self.filter(status__in=Delivery.FINISHED, finished_at__lt=when)


class Delivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        DEAD = "dead"
        DISCARDED = "discarded"

    UNFINISHED = (Status.PENDING, Status.DEAD)  # can be retried or discarded
    FINISHED = (Status.DONE, Status.DISCARDED)  # can be pruned

    # The unique (event, handler) constraint indexes both: no index of their own.
    event = models.ForeignKey(
        StoredEvent, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    handler = models.CharField(max_length=255)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="Calls of the handler.")
    runs = models.PositiveIntegerField(default=0, help_text="Runs of up to RETRY_ATTEMPTS calls.")
    calls = models.PositiveIntegerField(default=0, help_text="Calls in the run under way.")
    next_attempt_at = models.DateTimeField(
        default=timezone.now, help_text="Pending: due to run from then on."
    )
    lease_until = models.DateTimeField(
        null=True, blank=True, help_text="Held by a runner until then; due again after."
    )
    last_error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Done: when the call (or batch) that completed it began. Dead: when it died.",
    )
    # Deliveries of django.tasks tasks (messagebus.task_backend) set these three.
    priority = models.SmallIntegerField(default=0, help_text="Claimed before lower ones.")
    queue = models.CharField(
        max_length=100, default=DEFAULT_QUEUE, help_text="Workers may be limited to queues."
    )
    result = models.JSONField(
        null=True,
        blank=True,
        help_text="A task's outcome: its return value, when its call began and ended, and by "
        "which process.",
    )
    # Read from the message as it is stored, for a handler with a concurrency_key, or
    # with an ordering_key (never both).
    concurrency_key = models.CharField(
        max_length=KEY_LENGTH,
        blank=True,
        default="",
        help_text="Its handler runs at most max_concurrency deliveries of one key at once; "
        "or, ordered, one at a time in sequence.",
    )
    sequence = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Ordered: its place among its handler's deliveries of its key, in the order "
        "their events committed.",
    )

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["event", "handler"], name="messagebus_one_delivery_per_handler"
            ),
        ]
        indexes = [
            # The claim's filter and order, so many rows sharing one time stay fast.
            models.Index(
                fields=["-priority", "next_attempt_at", "id"],
                condition=Q(status="pending", lease_until__isnull=True),
                name="messagebus_delivery_due",
            ),
            models.Index(
                fields=["finished_at"],
                condition=Q(status__in=["done", "discarded"]),
                name="messagebus_delivery_finished",
            ),
            models.Index(
                fields=["lease_until"],
                condition=Q(status="pending", lease_until__isnull=False),
                name="messagebus_delivery_leased",
            ),
            # An ordered delivery's unfinished elders: the claim's look behind it.
            models.Index(
                fields=["handler", "concurrency_key", "sequence"],
                condition=Q(sequence__isnull=False, status__in=["pending", "dead"]),
                name="messagebus_delivery_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} of {self.event_id} to {self.handler}"

    @property
    def latency(self) -> dt.timedelta | None:
        """From storing the event to the start of the call that completed (or killed) it."""
        return self.finished_at - self.created_at if self.finished_at else None


class WorkerBeatQuerySet(models.QuerySet["WorkerBeat"]):
    def running(self) -> WorkerBeatQuerySet:
        """Not stopped since they last said they were alive (a new process with an old
        one's host:pid beats after its stop)."""
        return self.filter(Q(stopped_at__isnull=True) | Q(stopped_at__lt=models.F("seen_at")))

    def mark_stopped(self) -> int:
        """Stopped cleanly: kept, so that when and where a worker was last seen is known."""
        return self.update(stopped_at=timezone.now())


class WorkerBeat(models.Model):
    """A process of the bus (a worker, a relay, a consumer), as it last said it was alive."""

    class Role(models.TextChoices):
        WORKER = "worker"
        RELAY = "relay"
        CONSUMER = "consumer"

    id = models.CharField(primary_key=True, max_length=255, help_text="[role:]host:pid")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.WORKER)
    database = models.CharField(max_length=100)
    started_at = models.DateTimeField(default=timezone.now)
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)
    processed = models.PositiveBigIntegerField(default=0)
    stopped_at = models.DateTimeField(
        null=True, blank=True, help_text="When it stopped cleanly (none: running, or killed)."
    )

    objects = WorkerBeatQuerySet.as_manager()

    class Meta:
        verbose_name = "worker"
        ordering = ["-seen_at"]

    def __str__(self) -> str:
        return self.id

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None and self.stopped_at >= self.seen_at


class InboxMessage(models.Model):
    """A message that came in from a broker: handled once, or skipped with the reason."""

    class Status(models.TextChoices):
        HANDLED = "handled", "Handled"
        SKIPPED = "skipped", "Skipped"

    message_id = models.CharField(
        max_length=255, unique=True, help_text="The sender's id: a second copy is not handled."
    )
    channel = models.CharField(max_length=255)
    status = models.CharField(max_length=10, choices=Status.choices)
    command = models.CharField(max_length=200, blank=True, help_text="What it was handled as.")
    body = models.TextField()
    reason = models.TextField(blank=True, help_text="Why it was skipped.")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "inbound message"
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.channel} {self.message_id}"


class Pause(models.Model):
    """A paused handler: none of its deliveries starts until it is resumed; they stay
    pending (``messagebus.pause``, ``messagebus.resume``)."""

    handler = models.CharField(primary_key=True, max_length=255)
    paused_at = models.DateTimeField(default=timezone.now)
    paused_by = models.CharField(max_length=150, blank=True, help_text="Who paused it.")
    reason = models.TextField(blank=True)
    # A circuit breaker's: from then on, one delivery (of the event ``probe``) may run.
    until = models.DateTimeField(null=True, blank=True, help_text="Opened by the breaker until.")
    probe = models.UUIDField(null=True, blank=True, help_text="The event whose delivery probes.")

    class Meta:
        verbose_name = "paused handler"
        ordering = ["handler"]

    def __str__(self) -> str:
        return f"{self.handler} paused"


class ScheduleTick(models.Model):
    """A tick of a periodic schedule, recorded once, by whichever process got there first,
    in the transaction that stores its message (none: a missed tick, skipped)."""

    name = models.CharField(max_length=200, help_text="The periodic schedule's name.")
    tick_at = models.DateTimeField(help_text="The time the schedule's cron expression named.")
    message_id = models.UUIDField(
        null=True, blank=True, help_text="The message stored for it (none: a missed tick, skipped)."
    )
    recorded_at = models.DateTimeField(default=timezone.now)
    recorded_by = models.CharField(max_length=255, blank=True, help_text="[role:]host:pid")

    class Meta:
        verbose_name = "periodic schedule tick"
        ordering = ["-tick_at"]
        constraints = [
            models.UniqueConstraint(fields=["name", "tick_at"], name="messagebus_one_tick"),
        ]

    def __str__(self) -> str:
        return f"{self.name} at {self.tick_at:%Y-%m-%d %H:%M}"


class Slot(models.Model):
    """A delivery of a handler with a ``max_concurrency`` running now: one of the handler's
    slots (for one value of its ``concurrency_key``), taken before the call and freed
    with its end, held under a lease that a runner which died lets run out."""

    handler = models.CharField(max_length=255)
    key = models.CharField(max_length=KEY_LENGTH, blank=True, help_text="Its concurrency key.")
    number = models.PositiveIntegerField(help_text="From 0 to max_concurrency - 1.")
    event = models.UUIDField(help_text="The event whose delivery to the handler holds it.")
    lease_until = models.DateTimeField(help_text="Free again from then on, if not freed before.")
    taken_at = models.DateTimeField(default=timezone.now)
    wanted = models.BooleanField(
        default=False, help_text="A delivery found every slot taken: wake the workers as it frees."
    )

    class Meta:
        verbose_name = "concurrency slot"
        ordering = ["handler", "key", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["handler", "key", "number"], name="messagebus_one_delivery_per_slot"
            ),
        ]

    def __str__(self) -> str:
        key = f" ({self.key})" if self.key else ""
        return f"slot {self.number} of {self.handler}{key}"


class KeySequence(models.Model):
    """The last sequence number an ordered handler's deliveries of one key were given: taken
    by an UPDATE in the transaction that stores each, so a key's events commit one after
    another, in the order of their numbers."""

    handler = models.CharField(max_length=255)
    key = models.CharField(max_length=KEY_LENGTH, blank=True, help_text="Its ordering key.")
    last = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "ordering key"
        ordering = ["handler", "key"]
        constraints = [
            models.UniqueConstraint(fields=["handler", "key"], name="messagebus_one_sequence"),
        ]

    def __str__(self) -> str:
        return f"{self.handler} ({self.key}): {self.last}"


class ProcessInstance(models.Model):
    """An instance of a process manager (``messagebus.sagas``): its state between the
    messages it handles, found by the process's name and the value of its key field in
    those messages."""

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPENSATING = "compensating"  # undoing its steps, last first
        FINISHED = "finished"
        COMPENSATED = "compensated"  # every step it had done undone

    name = models.CharField(max_length=200, help_text="The process manager's name.")
    key = models.CharField(
        max_length=KEY_LENGTH, help_text="The value of its key field in the messages it handles."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    state = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True, help_text="Why it compensated.")
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    timed_out_at = models.DateTimeField(
        null=True, blank=True, help_text="When a message it had scheduled for itself came."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "process"
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(fields=["name", "key"], name="messagebus_one_process_per_key"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.key}"


class ProcessEntry(models.Model):
    """A line of a process's history: a message it handled, a command it sent (a step, or
    a step's compensation), or a message it scheduled for itself (a timeout)."""

    class Kind(models.TextChoices):
        HANDLED = "handled"
        STEP = "step"
        COMPENSATION = "compensation"
        TIMEOUT = "timeout"

    class Outcome(models.TextChoices):
        SENT = "sent"  # a command not run yet, a timeout not due yet
        DONE = "done"
        FAILED = "failed"  # for good: its process compensated
        COMPENSATED = "compensated"  # a step whose compensating command was sent
        CANCELLED = "cancelled"  # a timeout no longer needed

    process = models.ForeignKey(ProcessInstance, on_delete=models.CASCADE, related_name="history")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message_type = models.CharField(max_length=200)
    message_id = models.UUIDField(db_index=True)
    payload = models.JSONField(default=dict, blank=True)
    compensation = models.JSONField(
        null=True, blank=True, help_text="A step's compensating command, sent if a later one fails."
    )
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    detail = models.TextField(blank=True, help_text="What the command returned, or its error.")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "history entry"
        verbose_name_plural = "history"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.message_type} {self.message_id}"
