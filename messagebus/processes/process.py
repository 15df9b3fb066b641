"""What the bus's long-running processes share: the worker, the relay and the consumer.

Each has a role and an id (``host:pid``), says it is alive every few seconds
(a ``WorkerBeat`` row naming its role, kept and marked stopped when it stops
cleanly), and waits out an outage of the database or a broker with one loop:
a line per try, the waits doubling up to BACKOFF_MAX, back to the shortest
once it gets through.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from django.db import DatabaseError, connections
from django.utils import timezone

from ..models import WorkerBeat
from ..observe import logs
from ..wording import first_line

logger = logs.get_logger(__name__)
BACKOFF, BACKOFF_MAX = 1.0, 30.0  # seconds between tries to reach a database or broker
BEAT = 5.0  # seconds between a process's heartbeats


def backoff(failures: int) -> float:
    """Seconds to wait after this many failures in a row: doubling, capped."""
    return float(min(BACKOFF * 2.0 ** (failures - 1), BACKOFF_MAX))


class Process:
    """A running process of the bus: its ``role`` ("worker", "relay", "consumer"), its
    ``id``, its heartbeat and the wait through outages. ``stop()`` sets ``stopping``."""

    role = "worker"

    def __init__(self, using: str) -> None:
        self.using = using
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        if self.role != Process.role:
            self.id = f"{self.role}:{self.id}"
        self.failures = 0  # outages in a row
        self.stopping = threading.Event()
        self._signalled = False  # a SIGTERM or SIGINT is being handled
        self._beaten = float("-inf")  # due at once

    def stop(self, *args: object) -> None:
        self.stopping.set()

    def on_signal(self, *args: object) -> None:
        """SIGTERM's and SIGINT's handler: ``stop()``. A signal that arrives while the first
        is handled (a process group signalled twice at once: a shell's ``kill 0`` and its
        parent's) is the same request, and is dropped: handled inside the first, it would
        wait for ever for the lock the first holds in ``stopping.set()``."""
        if self._signalled:
            return
        self._signalled = True
        try:
            self.stop()
        finally:
            self._signalled = False

    @property
    def name(self) -> str:
        """How its log lines name it: ``Worker host:pid``."""
        return f"{self.role.capitalize()} {self.id}"

    def beat(self, processed: int) -> None:
        """Every BEAT seconds: say it is alive, for status, health and the dashboard."""
        now = time.monotonic()
        if now - self._beaten < BEAT:
            return
        self._beaten = now
        alive = {
            "role": self.role, "database": self.using, "seen_at": timezone.now(),
            "processed": processed,
        }  # fmt: skip
        WorkerBeat.objects.using(self.using).update_or_create(id=self.id, defaults=alive)

    def stopped(self) -> None:
        """It stopped cleanly: no longer one of those running, and when it was last seen."""
        with suppress(DatabaseError):
            WorkerBeat.objects.using(self.using).filter(id=self.id).mark_stopped()

    @contextmanager
    def beating(self, processed: Callable[[], int]) -> Iterator[None]:
        """Beat from a thread of its own while the block runs (a loop that blocks in a
        broker's client and cannot beat between batches)."""
        done = threading.Event()

        def keep_beating() -> None:
            try:
                while not done.is_set():
                    with suppress(DatabaseError):  # the loop itself reports outages
                        self.beat(processed())
                    done.wait(BEAT)
            finally:
                connections.close_all()

        thread = threading.Thread(target=keep_beating, name=f"{self.role} heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(BEAT * 2)

    def wait_out(self, exc: BaseException, unreached: str, *, lost: bool = False) -> None:
        """An outage: log it (its traceback once, if it tells more than the line, unless
        ``lost``: known to be a lost connection), then wait, the waits doubling with each
        failure in a row."""
        self.failures += 1
        delay = backoff(self.failures)
        logger.error(
            "%s cannot reach %s (failure %d, next try in %.0fs): %s: %s",
            self.name, unreached, self.failures, delay, type(exc).__name__, first_line(exc),
            exc_info=not lost and logs.stack_once(exc, self.failures),
        )  # fmt: skip
        self.stopping.wait(delay)

    def reached(self, unreached: str) -> None:
        """It got through: the next outage's waits start again from the shortest."""
        if self.failures:
            logger.info("%s reached %s again", self.name, unreached)
            self.failures = 0
