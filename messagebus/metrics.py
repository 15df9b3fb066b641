"""Moved: the view and the collectors to ``messagebus.ops.prometheus``, the counts to
``messagebus.observe.metrics``. This path still works, with a DeprecationWarning."""

from .moved import moved

__getattr__ = moved(__name__, "messagebus.ops.prometheus", "messagebus.observe.metrics")
