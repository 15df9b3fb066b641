"""What the API reads (input serializers) and what it shows (output serializers)."""

from typing import Any

from rest_framework import serializers

from .. import rules
from ..commands import MAX_ORDER_LINES, Allocate, ChangeBatchQuantity, CreateBatch, Line, PlaceOrder
from ..processes import STATES


class StrictCharField(serializers.CharField):
    """A JSON string, as the schema says: DRF's ``CharField`` also takes numbers (0 as "0")."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON number, as the schema says: DRF's ``IntegerField`` also takes strings ("3")."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def field(
    command: type, name: str, help_text: str, **options: Any
) -> serializers.Field[Any, Any, Any, Any]:
    """The input field for ``command``'s field ``name``, built from the rule it obeys."""
    rule = rules.rule(command, name)
    if isinstance(rule, rules.Identifier):
        return StrictCharField(
            max_length=rule.max_length, validators=list(rule.validators), help_text=help_text,
            **options,
        )  # fmt: skip
    if isinstance(rule, rules.Quantity):
        return StrictIntegerField(
            min_value=rule.minimum, max_value=rule.maximum, help_text=help_text, **options
        )
    return serializers.DateField(allow_null=rule.optional, help_text=help_text, **options)


class BatchInputSerializer(serializers.Serializer[None]):
    ref = field(CreateBatch, "ref", "The batch's reference, unique across SKUs.")
    sku = field(CreateBatch, "sku", "The product's SKU; a new SKU creates the product.")
    qty = field(CreateBatch, "qty", "The purchased quantity.")
    eta = field(CreateBatch, "eta", "When the batch arrives; null: in stock.", default=None)


class BatchFilterSerializer(serializers.Serializer[None]):
    """The list's query parameters: pass ``query_params.dict()``, so that ``?sku=`` is blank,
    an error, as the schema's ``minLength: 1`` says (a ``QueryDict`` would make it absent)."""

    sku = field(CreateBatch, "sku", "Only this SKU's batches.", required=False)


class BatchQuantityInputSerializer(serializers.Serializer[None]):
    qty = field(
        ChangeBatchQuantity, "qty",
        "The new purchased quantity; lines that no longer fit are reallocated.",
    )  # fmt: skip


class AllocateInputSerializer(serializers.Serializer[None]):
    orderid = field(Allocate, "orderid", "The order's id.")
    sku = field(Allocate, "sku", "The SKU ordered.")
    qty = field(Allocate, "qty", "The quantity ordered.")


class LineInputSerializer(serializers.Serializer[None]):
    sku = field(Line, "sku", "The SKU ordered.")
    qty = field(Line, "qty", "The quantity ordered.")


class OrderInputSerializer(serializers.Serializer[None]):
    orderid = field(PlaceOrder, "orderid", "The order's id, one no order has yet.")
    lines = LineInputSerializer(  # type: ignore[call-arg]  # the stubs miss max_length
        many=True, allow_empty=False, max_length=MAX_ORDER_LINES,
        help_text="The lines ordered, each of its own SKU.",
    )  # fmt: skip


class BatchSerializer(serializers.Serializer[Any]):
    ref = serializers.CharField()
    sku = serializers.CharField()
    qty = serializers.IntegerField(help_text="The purchased quantity.")
    eta = serializers.DateField(allow_null=True)
    allocated = serializers.IntegerField(help_text="The quantity allocated to order lines.")
    available = serializers.IntegerField(help_text="The quantity left to allocate.")


class AllocationSerializer(serializers.Serializer[Any]):
    orderid = serializers.CharField()
    sku = serializers.CharField()
    qty = serializers.IntegerField()
    batchref = serializers.CharField(help_text="The batch the line is allocated to.")


class OrderAllocationSerializer(serializers.Serializer[Any]):
    sku = serializers.CharField()
    batchref = serializers.CharField()


class OrderLineSerializer(serializers.Serializer[Any]):
    sku = serializers.CharField()
    qty = serializers.IntegerField()
    batchref = serializers.CharField(
        allow_null=True, help_text="The batch the line is allocated to; null: none (yet)."
    )


class OrderSerializer(serializers.Serializer[Any]):
    orderid = serializers.CharField()
    state = serializers.ChoiceField(
        STATES,
        help_text="pending: allocating, or allocated and awaiting confirmation; confirmed; "
        "rejected: a line could not be allocated, so none is; released: not confirmed in "
        "time, so its lines were given up.",
    )
    lines = OrderLineSerializer(many=True)


class BatchrefSerializer(serializers.Serializer[Any]):
    batchref = serializers.CharField(
        allow_null=True, help_text="The batch the line is allocated to; null: out of stock."
    )


class MessageSerializer(serializers.Serializer[Any]):
    message = serializers.CharField()
