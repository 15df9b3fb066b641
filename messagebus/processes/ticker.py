"""The ticks of the periodic schedules, fired by every worker (and relay): no beat process.

Each process keeps, in memory, when each schedule's next tick falls, and only then
asks the database: the last tick recorded, and, if one is due, records it with its
message in one transaction (``handling.scheduling.fire``). The tick's row is unique,
so however many processes get there, one of them sends it.
"""

from __future__ import annotations

import datetime as dt

from django.db import DatabaseError
from django.utils import timezone

from ..core import periodic
from ..handling import scheduling
from ..observe import logs

logger = logs.get_logger(__name__)


class Ticker:
    def __init__(self, using: str, by: str = "") -> None:
        self.using = using
        self.by = by
        self._next: dict[str, dt.datetime] = {}  # schedule -> its next tick, as last seen

    def run(self, now: dt.datetime | None = None) -> int:
        """Fire the ticks due at ``now`` (default: now); how many this process sent."""
        now = now or timezone.now()
        due = [s for s in periodic.schedules.all() if now >= self._next.get(s.name, now)]
        if not due:
            return 0
        last = scheduling.last_ticks(self.using)
        sent = 0
        for schedule in due:
            tick = schedule.due(last.get(schedule.name), now)
            if tick is not None:
                at, send = tick
                try:
                    fired = scheduling.fire(schedule, at, send, self.using, self.by)
                except DatabaseError:
                    raise  # an outage: the process waits it out, and looks again
                except Exception:  # its function may raise anything
                    logger.exception("The tick %s of %s failed", at.isoformat(), schedule.name)
                    fired = False
                sent += fired and send
            self._next[schedule.name] = schedule.following(now)
        return sent

    def next_at(self) -> dt.datetime | None:
        """When the next tick of any schedule falls, as far as this process knows."""
        known = [self._next[s.name] for s in periodic.schedules.all() if s.name in self._next]
        return min(known, default=None)
