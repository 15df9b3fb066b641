"""Process managers (sagas): workflows over several messages, their state in the database.

A ``ProcessManager`` subclass is started by a message, finds its instance in later
ones by the value of its ``key`` field, sends commands (its steps) and schedules its
own timeouts in the unit of work of the message it handles, and finishes; or fails,
and then compensates the steps it had done, last first, each a command in the outbox.
"""

from .manager import ProcessManager
from .registration import handles, process_manager, starts

__all__ = ["ProcessManager", "handles", "process_manager", "starts"]
