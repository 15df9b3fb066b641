"""OpenAPI descriptions shared by the API's operations."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse

from .serializers import BatchInputSerializer, BatchSerializer, MessageSerializer


def message(description: str, example: str, *others: OpenApiExample) -> OpenApiResponse:
    return OpenApiResponse(
        MessageSerializer,
        description=description,
        examples=[OpenApiExample("Example", value={"message": example}), *others],
    )


def path_parameter(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, description=description)


FIELD_ERRORS = {
    "type": "object",
    "additionalProperties": {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    },
}
# A list of objects' errors: the list's own, or each object's by field ({} if none), in
# a list or by position.
_EACH_FIELD = {"type": "object", "description": "Errors by field, or by position then field."}
NESTED_FIELD_ERRORS = {
    "type": "object",
    "additionalProperties": {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"oneOf": [{"type": "string"}, _EACH_FIELD]}},
            _EACH_FIELD,
        ]
    },
}


def invalid_input(
    *examples: OpenApiExample, errors: dict[str, Any] = FIELD_ERRORS
) -> OpenApiResponse:
    return OpenApiResponse(
        errors,
        description="Invalid input: each invalid field with what is wrong, or a message "
        "when the body is not a JSON object or the domain turns it down.",
        examples=[
            OpenApiExample(
                "Invalid field", value={"qty": ["Ensure this value is greater than or equal to 1."]}
            ),
            OpenApiExample("Not JSON", value={"message": "JSON parse error - Expecting value"}),
            *examples,
        ],
    )


INVALID_INPUT = invalid_input()
INVALID_ORDER = invalid_input(
    OpenApiExample(
        "Invalid line", value={"lines": {"1": {"qty": ["A valid integer is required."]}}}
    ),
    errors=NESTED_FIELD_ERRORS,
)
INVALID_ALLOCATION = invalid_input(
    OpenApiExample("Unknown SKU", value={"message": "Invalid sku LAMP"})
)
SIGNED_OUT = message(
    "Not signed in (send `Authorization: Token <key>` or a session cookie).",
    "Authentication credentials were not provided.",
)
FORBIDDEN = message(
    "Signed in without the model permission this needs.",
    "You do not have permission to perform this action.",
)
AUTH_ERRORS = {401: SIGNED_OUT, 403: FORBIDDEN}
READ_ERRORS = {401: SIGNED_OUT}


def location(status: int) -> OpenApiParameter:
    return OpenApiParameter(
        "Location",
        OpenApiTypes.URI,
        OpenApiParameter.HEADER,
        response=[status],
        description="The URL of what was created.",
    )


LOCATION = location(201)
UNKNOWN_BATCH = message("No batch has this reference.", "Unknown batch b1")
ALREADY_ALLOCATED_DESCRIPTION = (
    "The order has this SKU allocated already, with another quantity: "
    "the line keeps its quantity and batch."
)
ALREADY_ALLOCATED_MESSAGE = "Order o1 already has 3 x LAMP allocated (batch b1)"
ALREADY_ALLOCATED = message(ALREADY_ALLOCATED_DESCRIPTION, ALREADY_ALLOCATED_MESSAGE)
NOT_ALLOCATED = message(
    f"No batch can take the line (out of stock). Or: {ALREADY_ALLOCATED_DESCRIPTION}",
    "Out of stock for LAMP",
    OpenApiExample("Allocated already", value={"message": ALREADY_ALLOCATED_MESSAGE}),
)
# The request and responses of adding a batch, on the API's route and the book's.
ADD_BATCH: dict[str, Any] = {
    "request": BatchInputSerializer,
    "parameters": [LOCATION],
    "responses": {
        201: BatchSerializer,
        400: INVALID_INPUT,
        **AUTH_ERRORS,
        409: message("A batch has this reference.", "Batch b1 already exists"),
    },
}
