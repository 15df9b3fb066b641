"""Periodic schedules: a message sent at each tick of a cron expression, in a time zone.

Declared in ``MESSAGEBUS["SCHEDULES"]`` (a message class and its keyword arguments) or
with ``@messagebus.periodic(cron)`` on a function that makes the message for a tick.
This module only names the ticks (cronsim reads the expressions) and decides what a
late tick gets; the workers record each tick once (``handling.scheduling.fire``).

A tick more than ``LATE`` seconds past when it is looked at was missed (the workers
were down, or busy past it): ``missed="once"`` runs one catch-up tick for all the
ticks missed (the latest), ``missed="skip"`` records it as skipped and runs none. A
schedule never ticked before starts with its first tick on time.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cronsim import CronSim, CronSimError
from django.utils.module_loading import import_string

from .. import conf
from ..exceptions import ScheduleError
from .messages import Command, Event, Message

F = TypeVar("F", bound=Callable[[dt.datetime], Message])

ONCE, SKIP = "once", "skip"
MISSED = (ONCE, SKIP)
LATE = 60.0  # seconds past its time after which a tick counts as missed
KEYS = {"cron", "message", "kwargs", "timezone", "missed"}  # of a schedule in SCHEDULES


@dataclass(frozen=True)
class Periodic:
    """A message made by ``make(tick)`` at each tick of ``cron`` in ``timezone``."""

    name: str
    cron: str
    make: Callable[[dt.datetime], Message] = field(compare=False)
    timezone: str = "UTC"
    missed: str = ONCE
    zone: zoneinfo.ZoneInfo = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.missed not in MISSED:
            raise ScheduleError(
                f"{self.name}: missed must be 'once' or 'skip', not {self.missed!r}"
            )
        try:
            zone = zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise ScheduleError(f"{self.name}: no time zone {self.timezone!r}") from None
        object.__setattr__(self, "zone", zone)
        try:
            CronSim(self.cron, dt.datetime.now(zone))
        except (CronSimError, TypeError) as exc:
            raise ScheduleError(f"{self.name}: bad cron expression {self.cron!r}: {exc}") from None

    def latest(self, now: dt.datetime) -> dt.datetime:
        """The last tick at or before ``now``."""
        # cronsim counts whole seconds, backwards from strictly before its start.
        start = now.astimezone(self.zone).replace(microsecond=0) + dt.timedelta(seconds=1)
        return next(CronSim(self.cron, start, reverse=True))

    def following(self, now: dt.datetime) -> dt.datetime:
        """The first tick after ``now``."""
        return next(CronSim(self.cron, now.astimezone(self.zone)))

    def due(self, last: dt.datetime | None, now: dt.datetime) -> tuple[dt.datetime, bool] | None:
        """The tick to record at ``now``, the last one recorded being ``last``, and whether
        its message is sent (False: missed, skipped); None: no tick to record."""
        tick = self.latest(now)
        if last is not None and tick <= last:
            return None
        if (now - tick).total_seconds() <= LATE:
            return tick, True
        if last is None:  # never ticked: it starts with a tick on time
            return None
        return tick, self.missed == ONCE

    def message(self, tick: dt.datetime) -> Message:
        made = self.make(tick)
        if not isinstance(made, Command | Event):
            raise ScheduleError(f"{self.name} made {made!r}, not a command or an event")
        return made


def of_setting(name: str, spec: Any) -> Periodic:
    """The schedule ``MESSAGEBUS["SCHEDULES"][name]`` declares; ScheduleError if it cannot."""
    if not isinstance(spec, dict):
        raise ScheduleError(f"{name}: must be a dict with 'cron' and 'message'")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise ScheduleError(f"{name}: unknown key {', '.join(map(repr, unknown))}")
    if not isinstance(spec.get("cron"), str) or not isinstance(spec.get("message"), str):
        raise ScheduleError(f"{name}: 'cron' and 'message' (a dotted path) are required strings")
    try:
        cls = import_string(spec["message"])
    except ImportError as exc:
        raise ScheduleError(f"{name}: cannot import {spec['message']!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Command | Event)):
        raise ScheduleError(f"{name}: {spec['message']} is not a command or event class")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ScheduleError(f"{name}: 'kwargs' must be a dict")
    try:
        cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ScheduleError(f"{name}: {cls.__name__}(**kwargs) fails: {exc}") from None
    return Periodic(
        name, spec["cron"], lambda tick: cls(**kwargs),
        spec.get("timezone", "UTC"), spec.get("missed", ONCE),
    )  # fmt: skip


class Schedules:
    """The periodic schedules: those of the setting (read on each use), and those
    registered with ``@periodic``."""

    def __init__(self) -> None:
        self._registered: dict[str, Periodic] = {}

    def register(self, schedule: Periodic) -> None:
        if schedule.name in self._registered or schedule.name in self._declared():
            raise ScheduleError(f"A periodic schedule named {schedule.name!r} exists already")
        self._registered[schedule.name] = schedule

    def all(self) -> list[Periodic]:
        """Every schedule, by name; those the setting declares wrongly left out (the
        ``messagebus.E008`` check reports them)."""
        found = dict(self._registered)
        for name, spec in self._declared().items():
            try:
                found[name] = of_setting(name, spec)
            except ScheduleError:
                continue
        return [found[name] for name in sorted(found)]

    def problems(self) -> Iterator[str]:
        """What is wrong with the setting's schedules, one line each."""
        for name, spec in self._declared().items():
            try:
                of_setting(name, spec)
            except ScheduleError as exc:
                yield str(exc)

    @staticmethod
    def _declared() -> dict[str, Any]:
        value = conf.settings.SCHEDULES
        return value if isinstance(value, dict) else {}

    def reset(self) -> None:
        """Forget the schedules registered with ``@periodic`` (tests)."""
        self._registered = {}

    @contextmanager
    def temporary(self) -> Iterator[Schedules]:
        """Schedules registered inside the block are forgotten after it."""
        saved = dict(self._registered)
        try:
            yield self
        finally:
            self._registered = saved


schedules = Schedules()


def periodic(
    cron: str, *, timezone: str = "UTC", missed: str = ONCE, name: str | None = None
) -> Callable[[F], F]:
    """Send the message a function makes at each tick of ``cron``, in ``timezone``::

        @messagebus.periodic("0 3 * * *", timezone="Europe/Paris", missed="skip")
        def nightly_report(tick: datetime) -> Command:
            return SendReport(day=tick.date())

    ``name`` (default: the function's dotted path) is what its ticks are recorded under.
    Put it in a module that is imported at start-up, such as an app's ``handlers``.
    """

    def register(func: F) -> F:
        label = name or f"{func.__module__}.{func.__qualname__}"
        schedules.register(Periodic(label, cron, func, timezone, missed))
        return func

    return register
