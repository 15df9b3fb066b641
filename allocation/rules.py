"""The rules a command's fields obey, declared once beside each field (``commands.py``).

Every door applies them: the API's serializers, the admin's forms and the
management commands' arguments build their fields from them (``rule(command,
name)``), and a command checks itself as it is built (``check``), so a
translator of inbound messages, or any other code, cannot hand the domain a
value they refuse: a command with a negative quantity is never built.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.core.exceptions import ValidationError

from .exceptions import InvalidCommand
from .validators import IDENTIFIER_MAX_LENGTH, MAX_QUANTITY, validate_identifier

Validator = Callable[[Any], None]


@dataclass(frozen=True)
class Identifier:
    """Text that names something and may be a URL's path segment."""

    max_length: int = IDENTIFIER_MAX_LENGTH
    validators: Sequence[Validator] = field(default=(validate_identifier,))

    def check(self, value: Any) -> None:
        if not isinstance(value, str):
            raise ValidationError(f"{value!r} is not text", code="invalid")
        if len(value) > self.max_length:
            raise ValidationError(f"at most {self.max_length} characters", code="max_length")
        for validate in self.validators:
            try:
                validate(value)
            except ValidationError as exc:
                raise ValidationError(f"{value!r}: {exc.messages[0]}", code=exc.code) from None


@dataclass(frozen=True)
class Quantity:
    """A whole number of units, within bounds."""

    minimum: int = 1
    maximum: int = MAX_QUANTITY

    def check(self, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(f"{value!r} is not a whole number", code="invalid")
        if not self.minimum <= value <= self.maximum:
            raise ValidationError(
                f"{value} is not between {self.minimum} and {self.maximum}", code="out_of_range"
            )


@dataclass(frozen=True)
class Day:
    """A calendar date, or None when ``optional``."""

    optional: bool = True

    def check(self, value: Any) -> None:
        if value is None and self.optional:
            return
        if not isinstance(value, date) or isinstance(value, datetime):
            raise ValidationError(f"{value!r} is not a date", code="invalid")


Rule = Identifier | Quantity | Day


_found: dict[type, dict[str, Rule]] = {}


def rules(command: type) -> dict[str, Rule]:
    """Each field of ``command`` that has a rule -> its rule (from ``Annotated[type, rule]``)."""
    if command not in _found:
        found: dict[str, Rule] = {}
        for name, hint in typing.get_type_hints(command, include_extras=True).items():
            if typing.get_origin(hint) is typing.Annotated:
                found.update((name, m) for m in hint.__metadata__ if isinstance(m, Rule))
        _found[command] = found
    return _found[command]


def rule(command: type, name: str) -> Rule:
    """The rule ``command``'s field ``name`` obeys."""
    return rules(command)[name]


def check(command: object) -> None:
    """Raise ``InvalidCommand``, naming each field and what is wrong, unless all obey."""
    errors: dict[str, list[str]] = {}
    for name, each in rules(type(command)).items():
        try:
            each.check(getattr(command, name))
        except ValidationError as exc:
            errors[name] = exc.messages
    if errors:
        raise InvalidCommand(type(command).__name__, errors)
