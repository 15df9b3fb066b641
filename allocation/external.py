"""What the allocation service tells other services (the book's chapter 11).

The warehouse hears of each allocation on channel ``line_allocated``: the
``Allocated`` event's fields, as JSON.
"""

import messagebus

from .events import Allocated

messagebus.publishes(Allocated, channel="line_allocated")
