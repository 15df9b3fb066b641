"""How messagebus words what it tells people: in logs, errors and commands' output."""

from __future__ import annotations

from django.utils.text import Truncator

NO_ERROR = "(no error recorded)"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 delivery``, ``2 deliveries``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def describe(error: BaseException) -> str:
    """``module.Class: message``, as a delivery keeps its last error."""
    return f"{type(error).__module__}.{type(error).__qualname__}: {error}"


def first_line(error: BaseException | str, length: int | None = None) -> str:
    """The first line of an error, or of an error as a delivery kept it (a database's can
    run to several), cut to ``length`` characters with an ellipsis if given."""
    lines = str(error).strip().splitlines()
    if lines:
        line = lines[0]
    else:
        line = type(error).__name__ if isinstance(error, BaseException) else NO_ERROR
    return Truncator(line).chars(length) if length else line
