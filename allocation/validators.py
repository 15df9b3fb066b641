"""Limits on what the allocation service accepts, shared by models, API, admin and CLI."""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.utils.deconstruct import deconstructible

MAX_QUANTITY = 1_000_000
IDENTIFIER_MAX_LENGTH = 255
DOT_NAMES = (".", "..")


@deconstructible
class IdentifierValidator(RegexValidator):
    """Letters, digits, '-', '_' and '.', but not '.' or '..' alone.

    An identifier is a path segment of its URL (``/api/batches/{ref}``), and
    '.' and '..' would name the collection or its parent instead. The regex
    refuses them too, so that the OpenAPI schema's ``pattern`` says so.
    """

    regex = r"^(?!\.\.?\Z)[\w.-]+\Z"
    message = "Use only letters, digits, '-', '_' and '.'."
    code = "invalid_identifier"

    def __call__(self, value: Any) -> None:
        if value in DOT_NAMES:
            raise ValidationError(
                "'.' and '..' cannot be identifiers: in a URL they mean this path and its parent.",
                code="dot_identifier",
            )
        super().__call__(value)


validate_identifier = IdentifierValidator()
quantity_validators = [MinValueValidator(1), MaxValueValidator(MAX_QUANTITY)]
