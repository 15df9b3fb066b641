"""Limits on what the allocation service accepts, shared by models, API, admin and CLI."""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.utils.deconstruct import deconstructible

MAX_QUANTITY = 1_000_000
IDENTIFIER_MAX_LENGTH = 255
DOT_NAMES = (".", "..")


# ASCII letters and digits, '_', '.', '-', and the characters of other scripts, but no
# control character and no space. Written as ranges of code points, not as \w, because
# JSON Schema reads the OpenAPI ``pattern`` as an ECMAScript regex, where \w is ASCII
# alone: both engines read ranges alike, so the schema says what the server takes.
IDENTIFIER_CHARACTERS = (
    r"A-Za-z0-9_.\-"
    r"\u00a1-\u167f\u1681-\u1fff\u2010-\u2027\u2030-\u205e\u2060-\u2fff"
    r"\u3001-\ud7ff\ue000-\ufefe\uff00-\uffff"
)


@deconstructible
class IdentifierValidator(RegexValidator):
    """ASCII letters and digits, '-', '_', '.', other scripts' characters; not '.' or '..' alone.

    An identifier is a path segment of its URL (``/api/batches/{ref}``), and
    '.' and '..' would name the collection or its parent instead. The regex
    refuses them too, so that the OpenAPI schema's ``pattern`` says so.
    """

    regex = rf"^(?!\.\.?\Z)[{IDENTIFIER_CHARACTERS}]+\Z"
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
