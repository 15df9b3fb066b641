"""The project's routes, and the same allocation done without the bus."""

from django.db import transaction
from django.urls import path
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocation.api.serializers import AllocateInputSerializer, AllocationSerializer
from allocation.models import AllocationView, OrderLine, Product
from config.urls import urlpatterns as project_urlpatterns


class BareAllocateView(APIView):
    """POST /api/allocations's work in one transaction: no bus, no outbox, no second commit."""

    permission_classes = []

    def post(self, request: Request) -> Response:
        serializer = AllocateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        with transaction.atomic():
            product = Product.objects.locked().get(sku=data["sku"])
            line = OrderLine(**data)
            batchref = product.allocate(line)
            line.save()
            product.save(update_fields=["version_number"])
            AllocationView.objects.update_or_create(
                orderid=line.orderid, sku=line.sku, defaults={"batchref": batchref}
            )
        body = AllocationSerializer({**data, "batchref": batchref}).data
        return Response(body, status=status.HTTP_201_CREATED)


urlpatterns = [path("bench/allocations", BareAllocateView.as_view()), *project_urlpatterns]
