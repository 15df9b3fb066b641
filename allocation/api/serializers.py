"""What the API reads (input serializers) and what it shows (output serializers)."""

from typing import Any

from rest_framework import serializers

from ..validators import IDENTIFIER_MAX_LENGTH, MAX_QUANTITY, validate_identifier


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


def identifier(help_text: str, *, required: bool = True) -> serializers.CharField:
    return StrictCharField(
        max_length=IDENTIFIER_MAX_LENGTH,
        validators=[validate_identifier],
        help_text=help_text,
        required=required,
    )


def quantity(help_text: str) -> serializers.IntegerField:
    return StrictIntegerField(min_value=1, max_value=MAX_QUANTITY, help_text=help_text)


class BatchInputSerializer(serializers.Serializer[None]):
    ref = identifier("The batch's reference, unique across SKUs.")
    sku = identifier("The product's SKU; a new SKU creates the product.")
    qty = quantity("The purchased quantity.")
    eta = serializers.DateField(
        allow_null=True, default=None, help_text="When the batch arrives; null: in stock."
    )


class BatchFilterSerializer(serializers.Serializer[None]):
    """The list's query parameters: pass ``query_params.dict()``, so that ``?sku=`` is blank,
    an error, as the schema's ``minLength: 1`` says (a ``QueryDict`` would make it absent)."""

    sku = identifier("Only this SKU's batches.", required=False)


class BatchQuantityInputSerializer(serializers.Serializer[None]):
    qty = quantity("The new purchased quantity; lines that no longer fit are reallocated.")


class AllocateInputSerializer(serializers.Serializer[None]):
    orderid = identifier("The order's id.")
    sku = identifier("The SKU ordered.")
    qty = quantity("The quantity ordered.")


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


class BatchrefSerializer(serializers.Serializer[Any]):
    batchref = serializers.CharField(
        allow_null=True, help_text="The batch the line is allocated to; null: out of stock."
    )


class MessageSerializer(serializers.Serializer[Any]):
    message = serializers.CharField()
