"""How an idle worker waits: woken at once by PostgreSQL's NOTIFY, or by its poll interval.

Storing deliveries with the worker executor NOTIFYs (the notification goes out
when the transaction commits); a worker on PostgreSQL LISTENs on a connection
of its own. Polling stays as the fallback, and the only way on other databases.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import connections

from .. import compat
from ..outbox import sql
from ..wording import first_line

logger = logging.getLogger(__name__)
SLICE = 0.25  # seconds: how soon a waiting worker notices it is asked to stop
RETRY = 30.0  # seconds before trying to LISTEN again after a failure


class Wakeup:
    def __init__(self, using: str) -> None:
        self.using = using
        self._listener: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._next_try = 0.0

    def wait(self, seconds: float, stopping: threading.Event) -> bool:
        """Wait up to ``seconds`` for a notification; True if one came."""
        deadline = time.monotonic() + seconds
        while not stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            listener = self._listen()
            if listener is None:
                stopping.wait(min(left, SLICE))
                continue
            try:
                if any(True for _ in listener.notifies(timeout=min(left, SLICE))):
                    return True
            except self._errors as exc:
                logger.warning("Lost the LISTEN connection; polling: %s", first_line(exc))
                self.close()
        return False

    def _listen(self) -> Any:
        """A connection that LISTENs (PostgreSQL), opened on first use; None: poll."""
        connection = connections[self.using]
        if self._listener is not None or connection.vendor != "postgresql":
            return self._listener
        if time.monotonic() < self._next_try:
            return None
        import psycopg  # PostgreSQL's driver: there only

        self._errors = (psycopg.Error, OSError)
        try:
            listener = compat.new_connection(connection)
            listener.autocommit = True
            listener.execute(sql.listen_statement())
        except self._errors as exc:
            self._next_try = time.monotonic() + RETRY
            logger.warning("Cannot LISTEN for new deliveries; polling: %s", first_line(exc))
            return None
        self._listener = listener
        return listener

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._listener = None
