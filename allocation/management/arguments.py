"""argparse ``type=`` converters for the allocation commands' arguments."""

from argparse import ArgumentTypeError
from datetime import date

from django.core.exceptions import ValidationError

from ..validators import IDENTIFIER_MAX_LENGTH, MAX_QUANTITY, validate_identifier


def identifier(value: str) -> str:
    if len(value) > IDENTIFIER_MAX_LENGTH:
        raise ArgumentTypeError(f"at most {IDENTIFIER_MAX_LENGTH} characters")
    try:
        validate_identifier(value)
    except ValidationError as exc:
        raise ArgumentTypeError(f"{value!r}: {exc.messages[0]}") from None
    return value


def quantity(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= MAX_QUANTITY:
        raise ArgumentTypeError(f"{value} is not between 1 and {MAX_QUANTITY}")
    return number


def iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None
