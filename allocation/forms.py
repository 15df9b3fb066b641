"""Admin forms, each of which becomes one bus command."""

from typing import Any

from django import forms
from django.contrib.admin.widgets import AdminDateWidget

import messagebus

from . import rules
from .commands import Allocate, ChangeBatchQuantity, CreateBatch
from .models import Batch


def field(command: type, name: str, label: str, help_text: str = "") -> forms.Field:
    """The form field for ``command``'s field ``name``, built from the rule it obeys."""
    rule = rules.rule(command, name)
    if isinstance(rule, rules.Identifier):
        return forms.CharField(
            label=label, max_length=rule.max_length, validators=list(rule.validators),
            help_text=help_text,
        )  # fmt: skip
    if isinstance(rule, rules.Quantity):
        return forms.IntegerField(
            label=label, min_value=rule.minimum, max_value=rule.maximum, help_text=help_text
        )
    return forms.DateField(
        label=label, required=not rule.optional, widget=AdminDateWidget, help_text=help_text
    )


class CommandForm(forms.Form):
    """A form whose cleaned data makes one command."""

    def command(self) -> messagebus.Command:
        raise NotImplementedError


class CreateBatchForm(CommandForm):
    ref = field(CreateBatch, "ref", "Reference")
    sku = field(CreateBatch, "sku", "SKU", "A new SKU adds the product.")
    qty = field(CreateBatch, "qty", "Purchased quantity")
    eta = field(CreateBatch, "eta", "ETA", "Empty: in stock.")

    def command(self) -> CreateBatch:
        return CreateBatch(**self.cleaned_data)


class ChangeBatchQuantityForm(CommandForm):
    qty = field(
        ChangeBatchQuantity, "qty", "Purchased quantity",
        "Lines that no longer fit are deallocated and allocated again.",
    )  # fmt: skip

    def __init__(self, data: Any = None, *, batch: Batch) -> None:
        super().__init__(data, initial={"qty": batch.purchased_quantity})
        self.batch = batch

    def command(self) -> ChangeBatchQuantity:
        return ChangeBatchQuantity(ref=self.batch.reference, qty=self.cleaned_data["qty"])


class AllocateForm(CommandForm):
    orderid = field(Allocate, "orderid", "Order id")
    sku = field(Allocate, "sku", "SKU")
    qty = field(Allocate, "qty", "Quantity")

    def command(self) -> Allocate:
        return Allocate(**self.cleaned_data)
