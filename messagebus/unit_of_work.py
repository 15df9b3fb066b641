"""Moved to ``messagebus.handling.unit_of_work`` (``messagebus.Aggregate`` and
``messagebus.UnitOfWork`` for short). Migrations written before name
``messagebus.unit_of_work.Aggregate``, and a migration must load as written, so
this path stays, with no warning."""

from .handling.unit_of_work import Aggregate, UnitOfWork

__all__ = ["Aggregate", "UnitOfWork"]
