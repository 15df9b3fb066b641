"""Errors become HTTP responses here, and only here.

Domain errors and every other error without fields are shown as
``{"message": "..."}`` (the book's shape); invalid fields as DRF shows them,
``{"field": ["what is wrong"]}``.
"""

from typing import Any

from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..exceptions import AllocationError, DuplicateBatch, InvalidSku, UnknownBatch

STATUS_CODES: dict[type[AllocationError], int] = {
    InvalidSku: status.HTTP_400_BAD_REQUEST,
    UnknownBatch: status.HTTP_404_NOT_FOUND,
    DuplicateBatch: status.HTTP_409_CONFLICT,
}


class OutOfStockError(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "out_of_stock"

    def __init__(self, sku: str) -> None:
        super().__init__(f"Out of stock for {sku}")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, AllocationError):
        code = STATUS_CODES.get(type(exc), status.HTTP_400_BAD_REQUEST)
        return Response({"message": str(exc)}, status=code)
    response = drf_exception_handler(exc, context)
    if (
        response is not None
        and isinstance(response.data, dict)
        and set(response.data) == {"detail"}
    ):
        response.data = {"message": response.data["detail"]}
    return response
