"""Moved to ``messagebus.handling.unit_of_work`` (``messagebus.Aggregate`` and
``messagebus.UnitOfWork`` for short): this path, which older migrations name, still
works, with a DeprecationWarning."""

from .moved import moved

__getattr__ = moved(__name__, "messagebus.handling.unit_of_work")
