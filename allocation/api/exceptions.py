"""Errors become HTTP responses here, and only here.

Domain errors and every other error without fields are shown as
``{"message": "..."}`` (the book's shape); invalid fields as DRF shows them,
``{"field": ["what is wrong"]}``.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.exceptions import PermissionDenied as PermissionDeniedError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

import messagebus

from ..exceptions import (
    DuplicateBatch,
    InvalidCommand,
    InvalidSku,
    LineAlreadyAllocated,
    OrderClosed,
    ProductChanged,
    UnknownBatch,
)

# The domain's refusals (and the bus's, of a process manager's commands); others are 400s.
STATUS_CODES: dict[type[messagebus.CommandRejected], int] = {
    InvalidSku: status.HTTP_400_BAD_REQUEST,
    UnknownBatch: status.HTTP_404_NOT_FOUND,
    DuplicateBatch: status.HTTP_409_CONFLICT,
    LineAlreadyAllocated: status.HTTP_409_CONFLICT,
    ProductChanged: status.HTTP_409_CONFLICT,
    OrderClosed: status.HTTP_409_CONFLICT,
    messagebus.ProcessAlreadyStarted: status.HTTP_409_CONFLICT,
    messagebus.ProcessNotFound: status.HTTP_404_NOT_FOUND,
}


class OutOfStockError(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "out_of_stock"

    def __init__(self, sku: str) -> None:
        super().__init__(f"Out of stock for {sku}")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, InvalidCommand):  # a value from the URL: the fields' rules refuse it
        return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, messagebus.CommandRejected):
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


# Django's error views (``handler400``... in ``config.urls``), for errors raised
# outside DRF's views: JSON for API clients, Django's pages for the admin.


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A request Django refuses before any view: a body too large, a host not allowed..."""
    if request.path.startswith("/admin/"):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        message = f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
    else:
        message = "Bad request"
    return JsonResponse({"message": message}, status=status.HTTP_400_BAD_REQUEST)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/admin/"):
        return defaults.permission_denied(request, exception)
    return JsonResponse(
        {"message": str(PermissionDeniedError.default_detail)}, status=status.HTTP_403_FORBIDDEN
    )


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A path that names nothing."""
    if request.path.startswith("/admin/"):
        return defaults.page_not_found(request, exception)
    return JsonResponse({"message": f"Nothing at {request.path}"}, status=status.HTTP_404_NOT_FOUND)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/admin/"):
        return defaults.server_error(request)
    return JsonResponse(
        {"message": "Internal server error"}, status=status.HTTP_500_INTERNAL_SERVER_ERROR
    )
