"""Limits on what the allocation service accepts, shared by models, API, admin and CLI."""

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator

MAX_QUANTITY = 1_000_000
IDENTIFIER_MAX_LENGTH = 255

validate_identifier = RegexValidator(
    r"^[\w.-]+\Z",
    "Use only letters, digits, '-', '_' and '.'.",
    code="invalid_identifier",
)
quantity_validators = [MinValueValidator(1), MaxValueValidator(MAX_QUANTITY)]
