"""``/``: where each route of the API is, as DRF's routers answer at their root.

The admin's *View site* link leads here too. Left out of the OpenAPI schema.
"""

from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

# Each link: the URL name, and the path parameter it ends with, if any.
LINKS: dict[str, tuple[str, str | None]] = {
    "batches": ("allocation:batches", None),
    "batch": ("allocation:batch", "ref"),
    "allocations": ("allocation:allocations", None),
    "order-allocations": ("allocation:order-allocations", "orderid"),
    "orders": ("allocation:orders", None),
    "order": ("allocation:order", "orderid"),
    "order-confirmation": ("allocation:order-confirmation", "orderid"),
    "add-batch": ("allocation:add-batch", None),
    "allocate": ("allocation:allocate", None),
    "book-order-allocations": ("allocation:book-order-allocations", "orderid"),
    "schema": ("schema", None),
    "docs": ("docs", None),
    "redoc": ("redoc", None),
    "admin": ("admin:index", None),
}
_SAMPLE = "__parameter__"  # a valid identifier, replaced by the parameter's {name}


def link(request: Request, name: str, parameter: str | None) -> str:
    """The route's absolute URL; with a ``parameter``, a URI template: ``.../{ref}``."""
    if parameter is None:
        return reverse(name, request=request)
    url = reverse(name, kwargs={parameter: _SAMPLE}, request=request)
    return url.replace(_SAMPLE, f"{{{parameter}}}")


class RootView(APIView):
    """Anyone may read it: it says where things are, not what is in them."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
    schema = None

    def get(self, request: Request) -> Response:
        return Response({key: link(request, *route) for key, route in LINKS.items()})
