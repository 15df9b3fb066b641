"""The admin: stock is looked at here, and changed only through bus commands.

Adding a batch, changing a batch's quantity and allocating an order line
each hand one command to the bus (``CreateBatch``, ``ChangeBatchQuantity``,
``Allocate``); a command turned down shows its reason as an error message
beside the form, and nothing is saved.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

import messagebus

from .forms import AllocateForm, ChangeBatchQuantityForm, CommandForm, CreateBatchForm
from .models import AllocationView, Batch, BatchQuerySet, OrderLine, Product


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class CommandAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Views whose form is handed to the bus as a command instead of being saved.

    Nothing is deleted here: stock goes only through the commands.
    """

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def issue(self, request: HttpRequest, form: CommandForm) -> tuple[bool, Any]:
        """Hand a valid form's command to the bus: ``(True, its result)``.

        ``(False, None)`` when the form is not valid, or when the bus turns the
        command down (its reason then shows as an error message).
        """
        if not form.is_valid():
            return False, None
        try:
            return True, messagebus.bus.handle(form.command())
        except messagebus.CommandRejected as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return False, None

    def render_command_form(
        self, request: HttpRequest, form: forms.Form | None, title: str, **context: Any
    ) -> TemplateResponse:
        media = self.media + form.media if form is not None else self.media
        return TemplateResponse(
            request,
            "admin/allocation/command_form.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": title,
                "form": form,
                "media": media,
                **context,
            },
        )

    def changelist_url(self) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")


def posted(request: HttpRequest) -> Any:
    """The form data a request brings: its POST data, or None (an unbound form)."""
    return request.POST if request.method == "POST" else None


class BatchQuantities:
    """``allocated`` and ``available`` columns, computed by the database."""

    def get_queryset(self, request: HttpRequest) -> BatchQuerySet:
        return Batch.objects.with_quantities()

    @admin.display(ordering="allocated")
    def allocated(self, batch: Any) -> int:
        return int(batch.allocated)

    @admin.display(ordering="available")
    def available(self, batch: Any) -> int:
        return int(batch.available)


class BatchInline(BatchQuantities, admin.TabularInline):  # type: ignore[type-arg]
    model = Batch
    fields = readonly_fields = ("reference", "eta", "purchased_quantity", "allocated", "available")
    can_delete = False
    extra = 0
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Product)
class ProductAdmin(ReadOnlyAdmin):
    list_display = ["sku", "version_number"]
    search_fields = ["sku"]
    inlines = [BatchInline]


@admin.register(Batch)
class BatchAdmin(BatchQuantities, CommandAdmin):
    list_display = ["reference", "product", "eta", "purchased_quantity", "allocated", "available"]
    list_filter = [("eta", admin.EmptyFieldListFilter)]
    search_fields = ["reference", "product__sku"]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = CreateBatchForm(posted(request))
        done, _ = self.issue(request, form)
        if done:
            batch = Batch.objects.get(reference=form.cleaned_data["ref"])
            self.log_addition(request, batch, [{"added": {}}])
            self.message_user(request, f"Batch {batch} was added.", messages.SUCCESS)
            return HttpResponseRedirect(self.changelist_url())
        return self.render_command_form(request, form, "Add batch", submit_label="Add batch")

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        batch = self.get_object(request, unquote(object_id))
        if batch is None:
            raise Http404(f"No batch {object_id}")
        if not self.has_view_or_change_permission(request, batch):
            raise PermissionDenied
        form = None
        if self.has_change_permission(request, batch):
            form = ChangeBatchQuantityForm(posted(request), batch=batch)
            done, _ = self.issue(request, form)
            if done:
                qty = form.cleaned_data["qty"]
                self.log_change(request, batch, f"Changed the purchased quantity to {qty}.")
                self.message_user(request, f"Batch {batch} now holds {qty}.", messages.SUCCESS)
                return HttpResponseRedirect(request.path)
        return self.render_command_form(
            request,
            form,
            f"Batch {batch}",
            submit_label="Change quantity",
            details=[
                ("SKU", batch.sku),
                ("ETA", batch.eta or "in stock"),
                ("Purchased", batch.purchased_quantity),
                ("Allocated", batch.allocated),
                ("Available", batch.available),
            ],
            lines=batch.orderline_set.all(),
        )


@admin.register(OrderLine)
class OrderLineAdmin(CommandAdmin):
    list_display = ["orderid", "sku", "qty", "batch"]
    list_filter = ["sku"]
    search_fields = ["orderid", "sku", "batch__reference"]
    list_select_related = ["batch"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = AllocateForm(posted(request))
        done, batchref = self.issue(request, form)
        if done:
            line = form.cleaned_data
            if batchref is None:
                self.message_user(request, f"Out of stock for {line['sku']}", messages.WARNING)
            else:
                self.message_user(
                    request,
                    f"Order {line['orderid']}: {line['qty']} x {line['sku']} "
                    f"is allocated to batch {batchref}.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(self.changelist_url())
        return self.render_command_form(
            request, form, "Allocate an order line", submit_label="Allocate"
        )


@admin.register(AllocationView)
class AllocationViewAdmin(ReadOnlyAdmin):
    list_display = ["orderid", "sku", "batchref"]
    search_fields = ["orderid", "sku", "batchref"]
