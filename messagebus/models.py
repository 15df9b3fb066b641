"""The outbox: each event stored once, one delivery per (event, handler)."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import Q
from django.utils import timezone


class StoredEvent(models.Model):
    id = models.UUIDField(primary_key=True, help_text="The event's message_id.")
    type = models.CharField(max_length=200)
    payload = models.JSONField()
    correlation_id = models.UUIDField(db_index=True)
    causation_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "event"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    def pending(self) -> DeliveryQuerySet:
        return self.filter(status=Delivery.Status.PENDING)

    def due(self, now: dt.datetime | None = None) -> DeliveryQuerySet:
        return self.pending().filter(next_attempt_at__lte=now or timezone.now())

    def dead(self) -> DeliveryQuerySet:
        return self.filter(status=Delivery.Status.DEAD)

    def retryable(self) -> DeliveryQuerySet:
        """Deliveries that have not finished: dead, or pending."""
        return self.filter(status__in=[Delivery.Status.DEAD, Delivery.Status.PENDING])

    def finished_before(self, when: dt.datetime) -> DeliveryQuerySet:
        return self.filter(
            status__in=[Delivery.Status.DONE, Delivery.Status.DISCARDED], finished_at__lt=when
        )

    def requeue(self, now: dt.datetime | None = None) -> int:
        """Make dead or scheduled deliveries due now, with a fresh run budget."""
        return self.retryable().update(
            status=Delivery.Status.PENDING, runs=0, next_attempt_at=now or timezone.now()
        )

    def discard(self, now: dt.datetime | None = None) -> int:
        """Give up on deliveries that have not run: they are kept, never run."""
        return self.retryable().update(
            status=Delivery.Status.DISCARDED, finished_at=now or timezone.now()
        )


class Delivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        DEAD = "dead"
        DISCARDED = "discarded"

    # The unique (event, handler) constraint indexes both: no index of their own.
    event = models.ForeignKey(
        StoredEvent, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    handler = models.CharField(max_length=255)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="Calls of the handler.")
    runs = models.PositiveIntegerField(default=0, help_text="Runs of up to RETRY_ATTEMPTS calls.")
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(
        null=True, blank=True, help_text="Done: when the successful call began. Dead: when it died."
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
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="messagebus_delivery_due",
            ),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} of {self.event_id} to {self.handler}"

    @property
    def latency(self) -> dt.timedelta | None:
        """From storing the event to the start of the call that completed (or killed) it."""
        return self.finished_at - self.created_at if self.finished_at else None
