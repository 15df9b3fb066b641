"""Old import paths that still work, for a while, with a ``DeprecationWarning``.

A module that moved leaves a module at its old path whose ``__getattr__`` is
``moved(__name__, new, ...)``: each name is looked up where it lives now and
the warning says where that is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import import_module
from typing import Any


def moved(old: str, *new: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds ``old``'s names in the modules ``new``, in order."""

    def __getattr__(name: str) -> Any:
        for path in new:
            module = import_module(path)
            if hasattr(module, name):
                warnings.warn(
                    f"{old}.{name} is now {path}.{name}; the old path will be removed",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
