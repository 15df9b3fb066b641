"""Values passed to handlers by parameter name.

``uow`` and ``bus`` are always available; other names come from
``MESSAGEBUS["DEPENDENCIES"]``, a mapping of name to the dotted path of a
factory, called once per process on first use. Tests swap them with
``override()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.utils.module_loading import import_string

from . import conf
from .exceptions import ConfigurationError, UnknownDependency
from .registry import Handler

BUILTIN = frozenset({"uow", "bus"})


class Dependencies:
    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._overrides: dict[str, Any] = {}

    def names(self) -> set[str]:
        return set(BUILTIN) | set(conf.settings.DEPENDENCIES) | set(self._overrides)

    def get(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        if name not in self._built:
            path = conf.settings.DEPENDENCIES.get(name)
            if path is None:
                raise KeyError(name)
            try:
                self._built[name] = import_string(path)()
            except ImportError as exc:
                raise ConfigurationError(f"MESSAGEBUS['DEPENDENCIES'][{name!r}]: {exc}") from exc
        return self._built[name]

    def kwargs(self, handler: Handler, uow: Any, bus: Any) -> dict[str, Any]:
        """The keyword arguments ``handler`` takes after its message."""
        kwargs = {}
        for name, optional in handler.parameters:
            if name in self._overrides:
                kwargs[name] = self._overrides[name]
            elif name == "uow":
                kwargs[name] = uow
            elif name == "bus":
                kwargs[name] = bus
            else:
                try:
                    kwargs[name] = self.get(name)
                except KeyError:
                    if not optional:
                        raise UnknownDependency(name, handler.name) from None
        return kwargs

    @contextmanager
    def override(self, **values: Any) -> Iterator[None]:
        """Pass these values to handlers, by parameter name, inside the block."""
        saved = dict(self._overrides)
        self._overrides.update(values)
        try:
            yield
        finally:
            self._overrides = saved

    def clear(self) -> None:
        """Forget built dependencies (the settings changed)."""
        self._built.clear()


dependencies = Dependencies()
