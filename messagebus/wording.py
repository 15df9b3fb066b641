"""How messagebus words what it tells people: in logs, errors and commands' output."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 delivery``, ``2 deliveries``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def describe(error: BaseException) -> str:
    """``module.Class: message``, as a delivery keeps its last error."""
    return f"{type(error).__module__}.{type(error).__qualname__}: {error}"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a database's can run to several)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
