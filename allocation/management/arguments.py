"""argparse ``type=`` converters for the allocation commands' arguments, built from the
rules the command's fields obey (``allocation.rules``)."""

from argparse import ArgumentTypeError
from collections.abc import Callable
from datetime import date
from typing import Any

from django.core.exceptions import ValidationError

from .. import rules


def argument(command: type, name: str) -> Callable[[str], Any]:
    """An argument's text -> the value of ``command``'s field ``name``, as its rule says."""
    rule = rules.rule(command, name)

    def convert(text: str) -> Any:
        value = parsed(rule, text)
        try:
            rule.check(value)
        except ValidationError as exc:
            raise ArgumentTypeError(exc.messages[0]) from None
        return value

    convert.__name__ = name  # argparse names the argument's type in its errors
    return convert


def parsed(rule: rules.Rule, text: str) -> Any:
    if isinstance(rule, rules.Quantity):
        try:
            return int(text)
        except ValueError:
            raise ArgumentTypeError(f"{text!r} is not a whole number") from None
    if isinstance(rule, rules.Day):
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    return text
