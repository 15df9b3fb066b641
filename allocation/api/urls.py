"""The API's routes, each without a trailing slash (one is accepted too)."""

from django.urls import URLPattern, path, register_converter
from django.urls.converters import StringConverter
from rest_framework.views import APIView

from ..validators import IDENTIFIER_CHARACTERS
from .book import AddBatchView, AllocateView, BookOrderAllocationsView
from .root import RootView
from .views import (
    AllocationsView,
    BatchesView,
    BatchView,
    OrderAllocationsView,
    OrderConfirmationView,
    OrdersView,
    OrderView,
)

app_name = "allocation"


class IdentifierConverter(StringConverter):
    """A reference, SKU or order id; a path segment that is not one names nothing (404)."""

    regex = f"[{IDENTIFIER_CHARACTERS}]+"


register_converter(IdentifierConverter, "identifier")


def route(pattern: str, view: type[APIView], name: str) -> list[URLPattern]:
    """``pattern``, and ``pattern/`` as an alias left out of the OpenAPI schema."""
    return [
        path(pattern, view.as_view(), name=name),
        path(f"{pattern}/", view.as_view(schema=None)),
    ]


urlpatterns = [
    path("", RootView.as_view(), name="root"),
    *route("api/batches", BatchesView, "batches"),
    *route("api/batches/<identifier:ref>", BatchView, "batch"),
    *route("api/allocations", AllocationsView, "allocations"),
    *route("api/allocations/<identifier:orderid>", OrderAllocationsView, "order-allocations"),
    *route("api/orders", OrdersView, "orders"),
    *route("api/orders/<identifier:orderid>", OrderView, "order"),
    *route("api/orders/<identifier:orderid>/confirm", OrderConfirmationView, "order-confirmation"),
    *route("add_batch", AddBatchView, "add-batch"),
    *route("allocate", AllocateView, "allocate"),
    *route("allocations/<identifier:orderid>", BookOrderAllocationsView, "book-order-allocations"),
]
