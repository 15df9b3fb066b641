"""The book's own routes, so its end-to-end tests run against this service unchanged."""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

import messagebus

from ..commands import Allocate
from ..models import Batch, OrderLine
from . import schema
from .serializers import AllocateInputSerializer, BatchrefSerializer
from .views import AllocationAPIView, OrderAllocationsView, create_batch, validated


class AddBatchView(AllocationAPIView):
    queryset = Batch.objects.all()

    @extend_schema(tags=["book"], summary="Add a batch (the book's route)", **schema.ADD_BATCH)
    def post(self, request: Request) -> Response:
        return create_batch(request)


class AllocateView(AllocationAPIView):
    queryset = OrderLine.objects.all()

    @extend_schema(
        tags=["book"],
        summary="Allocate an order line (the book's route)",
        description="`batchref` is null when no batch can take the line.",
        request=AllocateInputSerializer,
        responses={
            202: BatchrefSerializer,
            400: schema.INVALID_ALLOCATION,
            **schema.AUTH_ERRORS,
            409: schema.ALREADY_ALLOCATED,
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(AllocateInputSerializer, request.data)
        batchref = messagebus.bus.handle(Allocate(**data))
        return Response(BatchrefSerializer({"batchref": batchref}).data, status.HTTP_202_ACCEPTED)


@extend_schema_view(
    get=extend_schema(tags=["book"], summary="Show an order's allocations (the book's route)")
)
class BookOrderAllocationsView(OrderAllocationsView):
    pass
