"""Admin forms, each of which becomes one bus command."""

from typing import Any

from django import forms
from django.contrib.admin.widgets import AdminDateWidget

import messagebus

from .commands import Allocate, ChangeBatchQuantity, CreateBatch
from .models import Batch
from .validators import IDENTIFIER_MAX_LENGTH, MAX_QUANTITY, validate_identifier


def identifier(label: str, help_text: str = "") -> forms.CharField:
    return forms.CharField(
        label=label,
        max_length=IDENTIFIER_MAX_LENGTH,
        validators=[validate_identifier],
        help_text=help_text,
    )


def quantity(label: str, help_text: str = "") -> forms.IntegerField:
    return forms.IntegerField(label=label, min_value=1, max_value=MAX_QUANTITY, help_text=help_text)


class CommandForm(forms.Form):
    """A form whose cleaned data makes one command."""

    def command(self) -> messagebus.Command:
        raise NotImplementedError


class CreateBatchForm(CommandForm):
    ref = identifier("Reference")
    sku = identifier("SKU", "A new SKU adds the product.")
    qty = quantity("Purchased quantity")
    eta = forms.DateField(
        label="ETA", required=False, widget=AdminDateWidget, help_text="Empty: in stock."
    )

    def command(self) -> CreateBatch:
        return CreateBatch(**self.cleaned_data)


class ChangeBatchQuantityForm(CommandForm):
    qty = quantity(
        "Purchased quantity", "Lines that no longer fit are deallocated and allocated again."
    )

    def __init__(self, data: Any = None, *, batch: Batch) -> None:
        super().__init__(data, initial={"qty": batch.purchased_quantity})
        self.batch = batch

    def command(self) -> ChangeBatchQuantity:
        return ChangeBatchQuantity(ref=self.batch.reference, qty=self.cleaned_data["qty"])


class AllocateForm(CommandForm):
    orderid = identifier("Order id")
    sku = identifier("SKU")
    qty = quantity("Quantity")

    def command(self) -> Allocate:
        return Allocate(**self.cleaned_data)
