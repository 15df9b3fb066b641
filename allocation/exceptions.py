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


class UnknownBatch(AllocationError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"Unknown batch {ref}")
        self.ref = ref
