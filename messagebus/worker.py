"""Moved to ``messagebus.processes.worker``: this path still works, with a DeprecationWarning."""

from .moved import moved

__getattr__ = moved(__name__, "messagebus.processes.worker")
