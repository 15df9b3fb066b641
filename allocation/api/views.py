"""The REST API: each view validates its input, hands a command or a query to the bus and
shows the result."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

import messagebus

from ..commands import Allocate, ChangeBatchQuantity, ConfirmOrder, CreateBatch, Line, PlaceOrder
from ..models import AllocationView, Batch, OrderLine
from ..queries import GetAllocations, GetBatch, GetOrder, ListBatches
from . import schema, throttling
from .exceptions import OutOfStockError
from .permissions import ModelPermissionsOrAnonymous
from .serializers import (
    AllocateInputSerializer,
    AllocationSerializer,
    BatchFilterSerializer,
    BatchInputSerializer,
    BatchQuantityInputSerializer,
    BatchSerializer,
    OrderAllocationSerializer,
    OrderInputSerializer,
    OrderSerializer,
)


class AllocationAPIView(APIView):
    # ``queryset`` names the model whose permissions a write needs. Bodies are
    # read by the parser of ``REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]`` (JSON).
    permission_classes = [ModelPermissionsOrAnonymous]

    def perform_authentication(self, request: Request) -> None:
        throttling.authenticate(self, request)


def validated(serializer_class: type[serializers.Serializer[Any]], data: Any) -> Any:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def create_batch(request: Request) -> Response:
    data = validated(BatchInputSerializer, request.data)
    messagebus.bus.handle(CreateBatch(**data))
    return Response(
        BatchSerializer(messagebus.bus.handle(GetBatch(ref=data["ref"]))).data,
        status=status.HTTP_201_CREATED,
        headers={"Location": reverse("allocation:batch", args=[data["ref"]], request=request)},
    )


class BatchesView(AllocationAPIView):
    queryset = Batch.objects.all()

    @extend_schema(
        tags=["batches"],
        summary="List batches",
        parameters=[BatchFilterSerializer],
        responses={
            200: BatchSerializer(many=True),
            400: schema.INVALID_INPUT,
            **schema.READ_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        query = ListBatches(**validated(BatchFilterSerializer, request.query_params.dict()))
        rows = messagebus.bus.handle(query)
        return Response(BatchSerializer(rows, many=True).data)

    @extend_schema(
        tags=["batches"],
        summary="Add a batch",
        description="Adds a batch of stock, and the product if its SKU is new.",
        **schema.ADD_BATCH,
    )
    def post(self, request: Request) -> Response:
        return create_batch(request)


class BatchView(AllocationAPIView):
    queryset = Batch.objects.all()

    @extend_schema(
        tags=["batches"],
        summary="Show a batch",
        parameters=[schema.path_parameter("ref", "The batch's reference.")],
        responses={
            200: BatchSerializer,
            **schema.READ_ERRORS,
            404: schema.UNKNOWN_BATCH,
        },
    )
    def get(self, request: Request, ref: str) -> Response:
        batch = messagebus.bus.handle(GetBatch(ref=ref))
        if batch is None:
            raise NotFound(f"Unknown batch {ref}")
        return Response(BatchSerializer(batch).data)

    @extend_schema(
        tags=["batches"],
        summary="Change a batch's quantity",
        description="Sets the purchased quantity. While the batch holds more than that, "
        "its most recent lines are deallocated and allocated again elsewhere.",
        parameters=[schema.path_parameter("ref", "The batch's reference.")],
        request=BatchQuantityInputSerializer,
        responses={
            200: BatchSerializer,
            400: schema.INVALID_INPUT,
            **schema.AUTH_ERRORS,
            404: schema.UNKNOWN_BATCH,
        },
    )
    def patch(self, request: Request, ref: str) -> Response:
        data = validated(BatchQuantityInputSerializer, request.data)
        messagebus.bus.handle(ChangeBatchQuantity(ref=ref, qty=data["qty"]))
        return Response(BatchSerializer(messagebus.bus.handle(GetBatch(ref=ref))).data)


class AllocationsView(AllocationAPIView):
    queryset = OrderLine.objects.all()

    @extend_schema(
        tags=["allocations"],
        summary="Allocate an order line",
        description="Allocates the line to a batch in stock if one can take it, else to the "
        "shipment arriving first. Allocating the same order and SKU again, with the same "
        "quantity, returns the batch the line already has; with another quantity, a 409.",
        request=AllocateInputSerializer,
        parameters=[schema.LOCATION],
        responses={
            201: AllocationSerializer,
            400: schema.INVALID_ALLOCATION,
            **schema.AUTH_ERRORS,
            409: schema.NOT_ALLOCATED,
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(AllocateInputSerializer, request.data)
        batchref = messagebus.bus.handle(Allocate(**data))
        if batchref is None:
            raise OutOfStockError(data["sku"])
        location = reverse("allocation:order-allocations", args=[data["orderid"]], request=request)
        return Response(
            AllocationSerializer({**data, "batchref": batchref}).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": location},
        )


class OrderAllocationsView(AllocationAPIView):
    queryset = AllocationView.objects.all()

    @extend_schema(
        tags=["allocations"],
        summary="Show an order's allocations",
        parameters=[schema.path_parameter("orderid", "The order's id.")],
        responses={
            200: OrderAllocationSerializer(many=True),
            **schema.READ_ERRORS,
            404: schema.message(
                "Nothing is allocated to this order.", "No allocations for order o1"
            ),
        },
    )
    def get(self, request: Request, orderid: str) -> Response:
        rows = messagebus.bus.handle(GetAllocations(orderid=orderid))
        if not rows:
            raise NotFound(f"No allocations for order {orderid}")
        return Response(OrderAllocationSerializer(rows, many=True).data)


def shown_order(orderid: str) -> dict[str, Any]:
    order = messagebus.bus.handle(GetOrder(orderid=orderid))
    if order is None:
        raise NotFound(f"Unknown order {orderid}")
    return dict(OrderSerializer(order).data)


ORDER_PARAMETER = schema.path_parameter("orderid", "The order's id.")
UNKNOWN_ORDER = schema.message("No order has this id.", "Unknown order o1")


class OrdersView(AllocationAPIView):
    queryset = OrderLine.objects.all()

    @extend_schema(
        tags=["orders"],
        summary="Place an order",
        description="Allocates every line of the order, or none: a line out of stock (or "
        "of an unknown SKU) rejects the order and releases the lines allocated already. "
        "The lines are allocated after the answer, or before it with the inline executor: "
        "the order shown is as it stands. An order not confirmed within "
        "ORDER_CONFIRM_TIMEOUT seconds is released.",
        request=OrderInputSerializer,
        parameters=[schema.location(202)],
        responses={
            202: OrderSerializer,
            400: schema.INVALID_ORDER,
            **schema.AUTH_ERRORS,
            409: schema.message("An order has this id.", "allocation.Order o1 has started already"),
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(OrderInputSerializer, request.data)
        lines = tuple(Line(**line) for line in data["lines"])
        messagebus.bus.handle(PlaceOrder(orderid=data["orderid"], lines=lines))
        location = reverse("allocation:order", args=[data["orderid"]], request=request)
        return Response(
            shown_order(data["orderid"]),
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": location},
        )


class OrderView(AllocationAPIView):
    queryset = OrderLine.objects.all()

    @extend_schema(
        tags=["orders"],
        summary="Show an order",
        parameters=[ORDER_PARAMETER],
        responses={200: OrderSerializer, **schema.READ_ERRORS, 404: UNKNOWN_ORDER},
    )
    def get(self, request: Request, orderid: str) -> Response:
        return Response(shown_order(orderid))


class OrderConfirmationView(AllocationAPIView):
    queryset = OrderLine.objects.all()

    @extend_schema(
        tags=["orders"],
        summary="Confirm an order",
        description="Confirms a pending order: at once if its lines are allocated, else "
        "once they are. Confirming a confirmed order again changes nothing.",
        request=None,
        parameters=[ORDER_PARAMETER],
        responses={
            200: OrderSerializer,
            **schema.AUTH_ERRORS,
            404: UNKNOWN_ORDER,
            409: schema.message(
                "The order was rejected, or released.",
                "Order o1 is released: it cannot be confirmed",
            ),
        },
    )
    def post(self, request: Request, orderid: str) -> Response:
        shown_order(orderid)  # 404 unless placed
        messagebus.bus.handle(ConfirmOrder(orderid=orderid))
        return Response(shown_order(orderid))
