"""Read-only admin for the outbox, with retry and discard actions."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from . import executors
from .delivery import states
from .models import Delivery, StoredEvent
from .wording import plural


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Machine-written rows: viewable, never edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Deleting would lose events: *discard* a delivery, *prune* old ones."""
        return False


def _pretty(data: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(data, indent=2, sort_keys=True))


class DeliveryInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Delivery
    fields = readonly_fields = (
        "handler", "status", "attempts", "runs", "next_attempt_at", "lease_until", "last_error",
    )  # fmt: skip
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(StoredEvent)
class StoredEventAdmin(ReadOnlyAdmin):
    list_display = ["type", "id", "correlation_id", "created_at"]
    list_filter = ["type", "created_at"]
    search_fields = ["=id", "=correlation_id"]
    fields = readonly_fields = (
        "type", "id", "correlation_id", "causation_id", "created_at", "payload_json",
    )  # fmt: skip
    date_hierarchy = "created_at"
    inlines = [DeliveryInline]

    @admin.display(description="payload")
    def payload_json(self, obj: StoredEvent) -> str:
        return _pretty(obj.payload)


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "event_type",
        "handler",
        "status",
        "attempts",
        "runs",
        "next_attempt_at",
        "error",
    ]
    list_filter = ["status", "event__type", "handler"]
    search_fields = ["=event__id", "=event__correlation_id"]
    list_select_related = ["event"]
    actions = ["retry_now", "discard"]
    fields = readonly_fields = (
        "event_link",
        "event_type",
        "handler",
        "status",
        "attempts",
        "runs",
        "created_at",
        "next_attempt_at",
        "lease_until",
        "finished_at",
        "correlation_id",
        "payload_json",
        "last_error",
        "traceback_text",
    )

    @admin.display(description="event", ordering="event__type")
    def event_type(self, obj: Delivery) -> str:
        return obj.event.type

    @admin.display(description="event")
    def event_link(self, obj: Delivery) -> str:
        url = reverse("admin:messagebus_storedevent_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    @admin.display(description="correlation id")
    def correlation_id(self, obj: Delivery) -> str:
        return str(obj.event.correlation_id)

    @admin.display(description="payload")
    def payload_json(self, obj: Delivery) -> str:
        return _pretty(obj.event.payload)

    @admin.display(description="traceback")
    def traceback_text(self, obj: Delivery) -> str:
        return format_html("<pre>{}</pre>", obj.traceback) if obj.traceback else "-"

    @admin.display(description="last error")
    def error(self, obj: Delivery) -> str:
        return obj.last_error.splitlines()[0][:120] if obj.last_error else ""

    @admin.action(description="Retry selected deliveries now", permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        pks = list(queryset.retryable().values_list("pk", flat=True))  # type: ignore[attr-defined]
        count = executors.retry(queryset.db, pks)
        skipped = queryset.count() - count
        self.message_user(
            request,
            f"Requeued {plural(count, 'delivery', 'deliveries')}."
            + (f" Skipped {skipped} done or discarded." if skipped else ""),
            messages.SUCCESS,
        )

    @admin.action(description="Discard selected deliveries (never run them)", permissions=["retry"])
    def discard(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = states.discarded(queryset)  # type: ignore[arg-type]
        self.message_user(
            request, f"Discarded {plural(count, 'delivery', 'deliveries')}.", messages.SUCCESS
        )

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("messagebus.change_delivery")
