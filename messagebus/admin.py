"""Read-only admin for the outbox, with retry and discard: bulk, and on a delivery's page;
and the outbox's dashboard."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import display_for_value, unquote
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from . import executors, outbox
from .exceptions import NotPausable
from .handling import scheduling
from .models import Delivery, InboxMessage, ProcessEntry, ProcessInstance, ScheduleTick, StoredEvent
from .ops import dashboard, pauses
from .outbox import states
from .wording import first_line

Status = Delivery.Status
DISCARD_CONFIRMATION = "admin/messagebus/delivery/discard_confirmation.html"
_FINISHED = {  # what a button says of a delivery that has finished meanwhile
    "retried": _("Delivery %(id)s is %(status)s: only a pending or dead delivery can be retried."),
    "discarded": _(
        "Delivery %(id)s is %(status)s: only a pending or dead delivery can be discarded."
    ),
}
_ENDINGS = (Status.DONE, Status.PENDING, Status.DEAD, Status.DISCARDED)  # as a retry reports them


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Machine-written rows: viewable, never edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Deleting would lose events: *discard* a delivery, *prune* old ones."""
        return False


def _pre(text: str) -> SafeString:
    """Preformatted, but long lines wrap instead of widening the page."""
    return format_html('<pre style="white-space: pre-wrap; word-break: break-word">{}</pre>', text)


def _pretty(data: Any) -> SafeString:
    return _pre(json.dumps(data, indent=2, sort_keys=True))


def _dotted(name: str) -> SafeString:
    """A dotted name that may break after each dot in a narrow column."""
    return format_html_join(mark_safe(".<wbr>"), "{}", ((part,) for part in name.split(".")))


class DeliveryColumns:
    """What the delivery list, a delivery's page and an event's deliveries show alike."""

    @admin.display(description=_("next attempt"), ordering="next_attempt_at")
    def next_attempt(self, obj: Delivery) -> str:
        """When a pending delivery is due; "-" once it is done, dead or discarded."""
        return display_for_value(obj.next_attempt_at if obj.status == Status.PENDING else None, "-")

    @admin.display(description=_("last error"))
    def error(self, obj: Delivery) -> str:
        if not obj.last_error:
            return ""
        line = first_line(obj.last_error, 200) if obj.last_error else ""
        return format_html('<span title="{}">{}</span>', line, line and first_line(line, 80))


class ReadOnlyInline(admin.TabularInline):  # type: ignore[type-arg]
    """Machine-written rows shown on their parent's page: never added, changed or deleted."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryInline(DeliveryColumns, ReadOnlyInline):
    model = Delivery
    fields = readonly_fields = (
        "handler", "status", "attempts", "runs", "next_attempt", "lease_until", "error",
    )  # fmt: skip
    show_change_link = True


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

    @admin.display(description=_("payload"))
    def payload_json(self, obj: StoredEvent) -> str:
        return _pretty(obj.payload)


@admin.register(InboxMessage)
class InboxMessageAdmin(ReadOnlyAdmin):
    """What came in from other services: handled once, or skipped with the reason."""

    list_display = ["received_at", "channel", "status", "command", "message_id", "reason"]
    list_filter = ["status", "channel"]
    search_fields = ["=message_id"]
    fields = readonly_fields = (
        "message_id", "channel", "status", "command", "reason", "body", "received_at",
    )  # fmt: skip


class ErrorFilter(admin.SimpleListFilter):
    """Deliveries whose last error's first line is the one given, as the dashboard groups
    dead letters (``health.dead_by_handler``). Shown only while in use: errors are many."""

    title = _("last error")
    parameter_name = "error"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        line = self.value()
        return [] if line is None else [(line, first_line(line, 80) if line else gettext("(none)"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> QuerySet[Delivery]:
        line = self.value()
        if line is None:
            return queryset
        return queryset.filter(Q(last_error=line) | Q(last_error__startswith=f"{line}\n"))


class ScheduledFilter(admin.SimpleListFilter):
    """Deliveries scheduled for later (``bus.schedule``): not due before a time to come."""

    title = _("when")
    parameter_name = "when"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("scheduled", gettext("scheduled for later"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> QuerySet[Delivery]:
        if self.value() != "scheduled":
            return queryset
        return queryset.filter(outbox.scheduled(timezone.now())).order_by("next_attempt_at")


@admin.register(ScheduleTick)
class ScheduleTickAdmin(ReadOnlyAdmin):
    """The periodic schedules' ticks: each recorded once, with the message it sent."""

    list_display = ["name", "tick_at", "message", "recorded_at", "recorded_by"]
    list_filter = ["name"]
    fields = readonly_fields = ("name", "tick_at", "message", "recorded_at", "recorded_by")

    @admin.display(description=_("message"))
    def message(self, obj: ScheduleTick) -> str:
        if obj.message_id is None:
            return gettext("none: missed, skipped")
        url = reverse("admin:messagebus_storedevent_change", args=[obj.message_id])
        return format_html('<a href="{}">{}</a>', url, obj.message_id)


class ProcessEntryInline(ReadOnlyInline):
    """A process's history: each message handled, command sent and timeout scheduled."""

    model = ProcessEntry
    fields = readonly_fields = (
        "at", "kind", "message_type", "message", "outcome", "detail", "payload",
    )  # fmt: skip

    @admin.display(description=_("message"))
    def message(self, obj: ProcessEntry) -> str:
        """A link to a message stored in the outbox (a command sent, a timeout)."""
        if obj.kind == ProcessEntry.Kind.HANDLED:
            return str(obj.message_id)
        url = reverse("admin:messagebus_storedevent_change", args=[obj.message_id])
        return format_html('<a href="{}">{}</a>', url, obj.message_id)


class TimedOutFilter(admin.SimpleListFilter):
    title = _("timed out")
    parameter_name = "timed_out"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", gettext("Yes")), ("no", gettext("No"))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[ProcessInstance]
    ) -> QuerySet[ProcessInstance]:
        if self.value() is None:
            return queryset
        return queryset.filter(timed_out_at__isnull=self.value() == "no")


@admin.register(ProcessInstance)
class ProcessInstanceAdmin(ReadOnlyAdmin):
    """Process managers' instances: running, finished, compensated, timed out; each with
    its state and its history."""

    list_display = ["name", "key", "status", "started_at", "updated_at", "timed_out_at"]
    list_filter = ["status", TimedOutFilter, "name"]
    search_fields = ["=key"]
    fields = readonly_fields = (
        "name", "key", "status", "reason", "state_json", "started_at", "updated_at",
        "timed_out_at", "finished_at",
    )  # fmt: skip
    date_hierarchy = "started_at"
    inlines = [ProcessEntryInline]

    @admin.display(description=_("state"))
    def state_json(self, obj: ProcessInstance) -> str:
        return _pretty(obj.state)


@admin.register(Delivery)
class DeliveryAdmin(DeliveryColumns, ReadOnlyAdmin):
    # Narrow columns first, so status, runs and the error fit at 1280 px.
    # The handler's last two dotted parts (the whole name on hover), the status a coloured label.
    list_display = [
        "id", "status_label", "runs", "error", "event_type", "handler_name", "created_at",
    ]  # fmt: skip
    list_display_links = ["id"]
    list_filter = ["status", "event__type", "handler", ScheduledFilter, ErrorFilter]
    search_fields = ["=event__id", "=event__correlation_id"]
    list_select_related = ["event"]
    actions = ["retry_now", "discard"]
    change_form_template = "admin/messagebus/delivery/change_form.html"
    change_list_template = "admin/messagebus/delivery/change_list.html"  # + Dashboard
    fields = readonly_fields = (
        "event_link",
        "event_type",
        "handler",
        "status",
        "attempts",
        "runs",
        "created_at",
        "next_attempt",
        "lease_until",
        "finished_at",
        "correlation_id",
        "payload_json",
        "last_error_text",
        "traceback_text",
        "priority",
        "queue",
        "concurrency_key",
        "sequence",
        "result_json",
    )

    def get_list_display(self, request: HttpRequest) -> Any:
        """Scheduled deliveries are listed with the time each is due."""
        shown = list(super().get_list_display(request))
        if request.GET.get(ScheduledFilter.parameter_name) == "scheduled":
            shown.insert(2, "next_attempt")
        return shown

    @admin.display(description=_("status"), ordering="status")
    def status_label(self, obj: Delivery) -> str:
        return format_html(
            '<span class="delivery-status delivery-status-{}">{}</span>',
            obj.status,
            obj.get_status_display(),
        )

    @admin.display(description=_("event"), ordering="event__type")
    def event_type(self, obj: Delivery) -> str:
        return _dotted(obj.event.type)

    @admin.display(description=_("handler"), ordering="handler")
    def handler_name(self, obj: Delivery) -> str:
        short = ".".join(obj.handler.rsplit(".", 2)[-2:])
        return format_html('<span title="{}">{}</span>', obj.handler, _dotted(short))

    @admin.display(description=_("event"))
    def event_link(self, obj: Delivery) -> str:
        url = reverse("admin:messagebus_storedevent_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    @admin.display(description=_("correlation id"))
    def correlation_id(self, obj: Delivery) -> str:
        return str(obj.event.correlation_id)

    @admin.display(description=_("payload"))
    def payload_json(self, obj: Delivery) -> str:
        return _pretty(obj.event.payload)

    @admin.display(description=_("last error"))
    def last_error_text(self, obj: Delivery) -> str:
        return _pre(obj.last_error) if obj.last_error else "-"

    @admin.display(description=_("traceback"))
    def traceback_text(self, obj: Delivery) -> str:
        return _pre(obj.traceback) if obj.traceback else "-"

    @admin.display(description=_("task result"))
    def result_json(self, obj: Delivery) -> str:
        return _pretty(obj.result) if obj.result is not None else "-"

    # Bulk actions on the list.

    @admin.action(description=_("Retry selected deliveries now"), permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        pks = list(queryset.retryable().values_list("pk", flat=True))  # type: ignore[attr-defined]
        count = executors.retry(queryset.db, pks)
        skipped = queryset.count() - count
        rows = list(Delivery.objects.using(queryset.db).filter(pk__in=pks))
        ended = Counter(row.status for row in rows)
        if all(_outcome(row) == "due" for row in rows):
            how, level = gettext("due now, for a worker to run"), messages.SUCCESS
        else:
            how = ", ".join(f"{ended[status]} {status}" for status in _ENDINGS if ended[status])
            level = messages.SUCCESS if set(ended) == {Status.DONE} else messages.WARNING
        requeued = ngettext(
            "Requeued %(count)d delivery", "Requeued %(count)d deliveries", count
        ) % {"count": count}
        self.message_user(
            request,
            requeued
            + (f": {how}." if count else ".")
            + (
                " " + gettext("Skipped %(count)d done or discarded.") % {"count": skipped}
                if skipped
                else ""
            ),
            level,
        )

    @admin.action(
        description=_("Discard selected deliveries (never run them)"), permissions=["retry"]
    )
    def discard(
        self, request: HttpRequest, queryset: QuerySet[Delivery]
    ) -> TemplateResponse | None:
        """Asks first, on a page of its own (as Django's delete does), then discards."""
        if request.POST.get("post") != "yes":
            return self._confirm_discard(request, list(queryset), action="discard")
        count = states.discarded(queryset)  # type: ignore[arg-type]
        self.message_user(
            request,
            ngettext("Discarded %(count)d delivery.", "Discarded %(count)d deliveries.", count)
            % {"count": count},
            messages.SUCCESS,
        )
        return None

    def _confirm_discard(
        self, request: HttpRequest, deliveries: list[Delivery], action: str | None
    ) -> TemplateResponse:
        """The page that asks before discarding: what would be discarded, what is left as it
        is (finished already); its form posts back with ``post=yes``."""
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Discard deliveries?"),
            "opts": self.opts,
            "action": action,
            "unfinished": [d for d in deliveries if d.status in Delivery.UNFINISHED],
            "finished": [d for d in deliveries if d.status not in Delivery.UNFINISHED],
            "selected": [d.pk for d in deliveries],
        }
        return TemplateResponse(request, DISCARD_CONFIRMATION, context)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("messagebus.change_delivery")

    # The dashboard, and the buttons on a delivery's page.

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"

        def button(action: str, view: Callable[..., HttpResponse]) -> URLPattern:
            wrapped = self.admin_site.admin_view(require_POST(view))
            return path(f"<path:object_id>/{action}/", wrapped, name=f"{prefix}_{action}")

        # Before the model's own URLs, whose last one takes any "<id>/...".
        return [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name=f"{prefix}_dashboard",
            ),
            path(
                "dashboard/pause/",
                self.admin_site.admin_view(require_POST(self.pause_view)),
                name=f"{prefix}_pause",
            ),
            path(
                "dashboard/resume/",
                self.admin_site.admin_view(require_POST(self.resume_view)),
                name=f"{prefix}_resume",
            ),
            button("retry", self.retry_view),
            button("discard", self.discard_view),
            button("cancel", self.cancel_view),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> TemplateResponse:
        """The outbox at a glance, for whoever may view deliveries."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            **dashboard.report(router.db_for_read(Delivery)),
            "title": gettext("Outbox dashboard"),
            "opts": self.opts,
            "can_retry": self.has_retry_permission(request),
        }
        return TemplateResponse(request, "admin/messagebus/delivery/dashboard.html", context)

    def pause_view(self, request: HttpRequest) -> HttpResponseRedirect:
        """The dashboard's Pause button: the handler's deliveries wait until resumed."""
        handler, using = self._handler(request)
        try:
            pauses.pause(
                handler, by=request.user.get_username(), reason=request.POST.get("reason", ""),
                using=using,
            )  # fmt: skip
        except NotPausable as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, gettext("Paused %(handler)s.") % {"handler": handler})
        return HttpResponseRedirect(reverse("admin:messagebus_delivery_dashboard"))

    def resume_view(self, request: HttpRequest) -> HttpResponseRedirect:
        """The dashboard's Resume button: the handler's due deliveries go to the executor."""
        handler, using = self._handler(request)
        if pauses.resume(handler, by=request.user.get_username(), using=using):
            self.message_user(request, gettext("Resumed %(handler)s.") % {"handler": handler})
        else:
            said = gettext("%(handler)s was not paused.") % {"handler": handler}
            self.message_user(request, said, messages.WARNING)
        return HttpResponseRedirect(reverse("admin:messagebus_delivery_dashboard"))

    def _handler(self, request: HttpRequest) -> tuple[str, str]:
        """The handler a dashboard button acts on, and the database to change it in."""
        if not self.has_retry_permission(request):
            raise PermissionDenied
        handler = request.POST.get("handler", "").strip()
        if not handler:
            raise Http404("No handler named")
        return handler, router.db_for_write(Delivery)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Delivery | None = None,
    ) -> HttpResponse:
        may = self.has_retry_permission(request)
        context["show_delivery_buttons"] = (
            obj is not None and obj.status in Delivery.UNFINISHED
        ) and may
        context["show_cancel_button"] = may and obj is not None and _is_scheduled(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        delivery, using = self._delivery(request, object_id)
        if executors.retry(using, [delivery.pk]):
            delivery.refresh_from_db(using=using)
            self.message_user(request, *_retried(delivery))
        else:
            self._finished(request, delivery, using, "retried")
        return HttpResponseRedirect(_page(object_id))

    def discard_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The Discard button: asks first, unless the delivery has finished already."""
        delivery, using = self._delivery(request, object_id)
        if request.POST.get("post") != "yes" and delivery.status in Delivery.UNFINISHED:
            return self._confirm_discard(request, [delivery], action=None)
        if states.discarded(Delivery.objects.using(using).filter(pk=delivery.pk)):
            self.message_user(
                request,
                gettext("Delivery %(id)s discarded.") % {"id": delivery.pk},
                messages.SUCCESS,
            )
        else:
            self._finished(request, delivery, using, "discarded")
        return HttpResponseRedirect(_page(object_id))

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        """The Cancel button of a scheduled delivery: its message's deliveries that have
        not started never run."""
        delivery, using = self._delivery(request, object_id)
        if scheduling.cancel(delivery.event_id, using=using):
            said = gettext("Cancelled %(event)s: its deliveries will not run.")
            self.message_user(request, said % {"event": delivery.event_id}, messages.SUCCESS)
        else:
            delivery.refresh_from_db(using=using, fields=["status"])
            said = gettext("Delivery %(id)s is %(status)s and started already: nothing to cancel.")
            self.message_user(
                request, said % {"id": delivery.pk, "status": delivery.status}, messages.WARNING
            )
        return HttpResponseRedirect(_page(object_id))

    def _delivery(self, request: HttpRequest, object_id: str) -> tuple[Delivery, str]:
        """The delivery a button acts on, and the database to change it in."""
        if not self.has_retry_permission(request):
            raise PermissionDenied
        delivery = self.get_object(request, unquote(object_id))
        if delivery is None:
            raise Http404(f"No delivery {object_id}")
        return delivery, router.db_for_write(Delivery, instance=delivery)

    def _finished(self, request: HttpRequest, delivery: Delivery, using: str, verb: str) -> None:
        delivery.refresh_from_db(using=using, fields=["status"])
        said = {"id": delivery.pk, "status": delivery.status}
        self.message_user(request, str(_FINISHED[verb]) % said, messages.WARNING)


def _is_scheduled(row: Delivery) -> bool:
    """Whether a delivery is scheduled for later, and can still be cancelled."""
    scheduled = Delivery.objects.filter(pk=row.pk).filter(outbox.scheduled(timezone.now()))
    return scheduled.using(row._state.db).exists()


def _page(object_id: str) -> str:
    return reverse("admin:messagebus_delivery_change", args=[object_id])


def _outcome(row: Delivery) -> str:
    """How a requeued delivery stands: its status, or what became of a pending one."""
    if row.status != Status.PENDING:
        return str(row.status)
    if row.lease_until is not None:
        return "running"
    if row.runs or row.calls:  # a call since the requeue, which set both to 0
        return "failed"
    return "later" if row.next_attempt_at > timezone.now() else "due"


def _retried(row: Delivery) -> tuple[str, int]:
    """The message, and its level, on how a retry of ``row`` (read back) ended."""
    outcome, said = _outcome(row), {"id": str(row.pk)}
    if outcome == "done":
        return gettext("Delivery %(id)s is done.") % said, messages.SUCCESS
    if outcome == "dead":
        reason = Truncator(" ".join(row.last_error.split())).chars(300)
        return gettext("Delivery %(id)s is dead: %(reason)s.") % {
            **said, "reason": reason
        }, messages.ERROR  # fmt: skip
    if outcome == "discarded":
        return gettext("Delivery %(id)s was discarded meanwhile.") % said, messages.WARNING
    if outcome == "running":
        return gettext("Delivery %(id)s is running in a worker.") % said, messages.INFO
    if outcome == "due":
        return gettext("Delivery %(id)s is due now; a worker will run it.") % said, messages.INFO
    said["wait"] = _duration((row.next_attempt_at - timezone.now()).total_seconds())
    said["error"] = first_line(row.last_error, 200)
    if outcome == "failed":
        text = (
            gettext("Delivery %(id)s failed again: %(error)s; next call in %(wait)s.")
            if row.calls  # its run goes on
            else gettext("Delivery %(id)s failed again: %(error)s; next run in %(wait)s.")
        )
        return text % said, messages.WARNING
    text = gettext("Delivery %(id)s asked to run later (%(error)s); next run in %(wait)s.")
    return text % said, messages.INFO


def _duration(seconds: float) -> str:
    """``30s``, ``4m``, ``2h``: a delay, rounded."""
    whole = max(0, round(seconds))
    if whole < 120:
        return f"{whole}s"
    return f"{round(whole / 60)}m" if whole < 7200 else f"{round(whole / 3600)}h"
