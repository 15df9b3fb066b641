"""Circuit breakers: a handler whose calls keep failing is paused for a cool-down, then
one delivery probes whether its service is back.

Each process counts the calls it makes of a handler that has a breaker
(``@handler(breaker=...)`` or MESSAGEBUS["BREAKER"]); when, within the
breaker's window, enough of them failed (transiently: not poison, not
postponed), it opens the breaker: a stored pause (``messagebus.models.Pause``,
paused by "circuit breaker", ``until`` the end of the cool-down), so every
process stops starting the handler's deliveries, none of which is used up.
After the cool-down one delivery due, the probe, may run: done, the pause is
lifted and the deliveries due go to the executor; failed, or not done within
another cool-down (wherever it ran), another cool-down. With nothing due to
probe with, the breaker closes.
Each change is logged, counted (``messagebus_breaker_changes_total``) and
published as an event (``HandlerPaused``, ``HandlerResumed``).

``record`` only counts, in memory, wherever a call ends (an event loop too);
``tick``, called by the processes that run deliveries, does the rest, at most
once a second, and nothing at all while no handler has a breaker: it settles
a probe this process ran at once, and any probe from the database once its
cool-down is over.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import deque
from functools import partial

from django.db import DatabaseError, transaction
from django.utils import timezone

from ..core.events import HandlerPaused, HandlerResumed
from ..core.policy import Breaker, Policy
from ..core.registry import registry
from ..handling import executor
from ..handling.unit_of_work import UnitOfWork
from ..models import Pause
from ..observe import logs, metrics
from ..outbox import states
from ..outbox.reference import Reference
from ..wording import first_line, plural

logger = logs.get_logger(__name__)

TICK = 1.0  # seconds between a process's looks at its breakers
KEPT = 100  # calls of a handler kept for its probe to be found among

Key = tuple[str, str]  # (database, handler)

_lock = threading.Lock()
_windows: dict[Key, deque[tuple[float, bool]]] = {}  # (when, failed), within the window
_ended: dict[Key, deque[tuple[uuid.UUID, bool]]] = {}  # (event, failed): a probe among them?
_ticked: dict[str, float] = {}


def record(ref: Reference, handler: str, breaker: Breaker, *, failed: bool) -> None:
    """A call of ``handler``, which has ``breaker``, ended: done, or failed transiently."""
    key = (ref.using, handler)
    now = time.monotonic()
    with _lock:
        calls = _windows.setdefault(key, deque())
        calls.append((now, failed))
        while calls[0][0] < now - breaker.window:
            calls.popleft()
        _ended.setdefault(key, deque(maxlen=KEPT)).append((ref.event_id, failed))


def tick(using: str) -> None:
    """Open the breakers whose window says so, settle the probes that ran here, and take
    the probes whose cool-down is over."""
    now = time.monotonic()
    if now - _ticked.get(using, float("-inf")) < TICK:
        return
    _ticked[using] = now
    breakers = _breakers()
    if not breakers:
        return
    try:
        _look(using, breakers)
    except DatabaseError as exc:  # the next tick looks again
        logger.warning("Could not look at the circuit breakers: %s", first_line(exc))


def _look(using: str, breakers: dict[str, Breaker]) -> None:
    with _lock:
        windows = {key[1]: list(calls) for key, calls in _windows.items() if key[0] == using}
        ended = {key[1]: list(e) for key, e in _ended.items() if key[0] == using}
        for key in [key for key in _ended if key[0] == using]:
            del _ended[key]
    pauses = {pause.handler: pause for pause in Pause.objects.using(using)}
    for handler, outcomes in ended.items():
        probe = pauses[handler].probe if handler in pauses else None
        for event, failed in outcomes:
            if event == probe and handler in breakers:
                _settle(using, handler, breakers[handler], event, failed)
    now = time.monotonic()
    for handler, calls in windows.items():
        breaker = breakers.get(handler)
        if breaker is None or handler in pauses:  # what it counted before the pause is old
            with _lock:
                _windows.pop((using, handler), None)
            continue
        recent = [failed for at, failed in calls if at >= now - breaker.window]
        failures = sum(recent)
        if len(recent) >= breaker.calls and failures >= breaker.rate * len(recent):
            _open(using, handler, breaker, failures, len(recent))
    for pause in states.breakers_due(using, timezone.now()):
        if pause.handler in breakers:
            _probe(using, pause, breakers[pause.handler])


def reset() -> None:
    """Forget what this process counted (tests)."""
    with _lock:
        _windows.clear()
        _ended.clear()
        _ticked.clear()


def _breakers() -> dict[str, Breaker]:
    found = {}
    for handler in registry.handlers():
        breaker = Policy.of(handler.options).breaker
        if breaker is not None and not handler.in_transaction:
            found[handler.name] = breaker
    return found


def _open(using: str, handler: str, breaker: Breaker, failures: int, calls: int) -> None:
    reason = f"{failures} of {plural(calls, 'call')} failed within {breaker.window:g}s"
    until = timezone.now() + dt.timedelta(seconds=breaker.cool_down)
    with UnitOfWork(using) as uow:
        opened = states.breaker_opened(using, handler, until, reason)
        if opened:
            uow.publish(HandlerPaused(handler, states.BREAKER, reason, until))
    with _lock:
        _windows.pop((using, handler), None)
    if opened:
        metrics.breaker(handler, "opened")
        logger.warning("Circuit breaker opened: %s paused for %gs (%s)",
                       handler, breaker.cool_down, reason)  # fmt: skip


def _probe(using: str, pause: Pause, breaker: Breaker) -> None:
    """The cool-down is over: settle the probe a cool-down ago, wherever it ran (done:
    closed; else open again), or take one."""
    until = timezone.now() + dt.timedelta(seconds=breaker.cool_down)
    if pause.probe is not None:
        _settle(using, pause.handler, breaker, pause.probe, not states.probe_done(using, pause))
        return
    probe = states.probe_taken(using, pause, until)
    if probe is None:
        return  # another process's
    if probe.event is None:
        _closed(using, pause.handler, "nothing is due to probe with")
    else:
        logger.info("Circuit breaker half open: one delivery of %s probes", pause.handler)
        refs = [Reference(using, probe.event, pause.handler)]
        transaction.on_commit(partial(executor.get().retried, refs), using=using)


def _settle(using: str, handler: str, breaker: Breaker, event: uuid.UUID, failed: bool) -> None:
    until = timezone.now() + dt.timedelta(seconds=breaker.cool_down) if failed else None
    if not failed:
        with UnitOfWork(using):
            ended = states.probe_ended(using, handler, event, None)
        if ended:
            _closed(using, handler, "its probe was delivered")
    elif states.probe_ended(using, handler, event, until):
        metrics.breaker(handler, "reopened")
        logger.warning("Circuit breaker still open: %s's probe failed; paused for %gs more",
                       handler, breaker.cool_down)  # fmt: skip


def _closed(using: str, handler: str, why: str) -> None:
    with UnitOfWork(using) as uow:
        uow.publish(HandlerResumed(handler, states.BREAKER))
        refs = states.due_of(using, handler)
    metrics.breaker(handler, "closed")
    logger.warning("Circuit breaker closed: %s resumed, %s", handler, why)
    transaction.on_commit(partial(executor.get().retried, refs), using=using)
