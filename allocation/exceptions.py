"""Why the allocation service turns a command down."""

import messagebus


class AllocationError(messagebus.CommandRejected):
    """Base class of the allocation domain's errors (do not raise directly)."""


class InvalidSku(AllocationError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"Invalid sku {sku}")
        self.sku = sku


class DuplicateBatch(AllocationError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"Batch {ref} already exists")
        self.ref = ref


class ProductChanged(AllocationError, messagebus.ConcurrencyError):
    """Another transaction saved the product since it was loaded: the bus runs the
    command again (MESSAGEBUS["COMMAND_RETRIES"]); after that, a conflict."""

    def __init__(self, sku: str, version: int) -> None:
        super().__init__(f"Product {sku} changed since version {version}; try again")
        self.sku = sku
        self.version = version


class UnknownBatch(AllocationError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"Unknown batch {ref}")
        self.ref = ref


class LineAlreadyAllocated(AllocationError):
    """The order has this SKU allocated already, with another quantity."""

    def __init__(self, orderid: str, sku: str, qty: int, ref: str) -> None:
        super().__init__(f"Order {orderid} already has {qty} x {sku} allocated (batch {ref})")
        self.orderid = orderid
        self.sku = sku
        self.qty = qty
        self.ref = ref


class LineDoesNotFit(AllocationError):
    """A batch was asked to take a line it cannot: another SKU, or more than it has left.

    ``Product.allocate`` only offers a line to a batch that can take it: this
    guards the batch when it is called directly.
    """

    def __init__(self, ref: str, sku: str, qty: int, batch_sku: str, available: int) -> None:
        super().__init__(
            f"Batch {ref} cannot take {qty} x {sku}: {available} x {batch_sku} available"
        )
        self.ref = ref
        self.sku = sku
        self.qty = qty


class InvalidCommand(AllocationError, ValueError):
    """A command built with a value its fields' rules refuse (``allocation.rules``)."""

    def __init__(self, command: str, errors: dict[str, list[str]]) -> None:
        detail = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in errors.items())
        super().__init__(f"Invalid {command}: {detail}")
        self.command = command
        self.errors = errors


class OrderClosed(AllocationError):
    """An order rejected, or released, cannot be confirmed."""

    def __init__(self, orderid: str, state: str) -> None:
        super().__init__(f"Order {orderid} is {state}: it cannot be confirmed")
        self.orderid = orderid
        self.state = state
