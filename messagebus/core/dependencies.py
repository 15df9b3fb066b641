"""Values passed to handlers by parameter name.

``uow`` and ``bus`` are always available; other names come from
``MESSAGEBUS["DEPENDENCIES"]``, a mapping of name to the dotted path of a
factory, called once per process on first use. Tests swap them with
``override()``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.utils.module_loading import import_string

from .. import conf
from ..exceptions import ConfigurationError, RegistrationError, UnknownDependency
from .registry import Handler

BUILTIN = frozenset({"uow", "bus"})


class Dependencies:
    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._overrides: dict[str, Any] = {}
        self._building = threading.Lock()

    def names(self) -> set[str]:
        return set(BUILTIN) | set(conf.settings.DEPENDENCIES) | set(self._overrides)

    def get(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        if name not in self._built:
            path = conf.settings.DEPENDENCIES.get(name)
            if path is None:
                raise KeyError(name)
            with self._building:  # one instance per process, even with threads
                if name not in self._built:
                    self._built[name] = self._build(name, path)
        return self._built[name]

    def _build(self, name: str, path: str) -> Any:
        try:
            return import_string(path)()
        except ImportError as exc:
            raise ConfigurationError(f"MESSAGEBUS['DEPENDENCIES'][{name!r}]: {exc}") from exc

    def call(self, handler: Handler, message: Any, uow: Any, bus: Any) -> Any:
        """Call sync ``handler`` with ``message`` and the dependencies it names."""
        if handler.parameters:
            result = handler.func(message, **self.kwargs(handler, uow, bus))
        else:
            result = handler.func(message)
        if inspect.iscoroutine(result):  # async, though it did not look it when registered
            result.close()
            raise RegistrationError(
                f"{handler.name} returned an awaitable: register it as an async def "
                "(or mark it with asgiref.sync.markcoroutinefunction)"
            )
        return result

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
        """Pass these values to handlers, by parameter name, inside the block.

        Overrides are process-wide, not per thread: a test's fake reaches the
        handlers its threads run too.
        """
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
