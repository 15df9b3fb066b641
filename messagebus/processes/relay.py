"""The loop behind ``manage.py messagebus relay``: due deliveries sent to Celery."""

from __future__ import annotations

from django.db import DatabaseError

from .. import conf, executors
from ..delivery import breaker
from ..exceptions import BrokerUnreachable, ConfigurationError
from ..executors.celery import CeleryExecutor, send
from ..outbox import states
from .worker import Worker


class Relay(Worker):
    """Send a task for every due delivery that no task carries, until stopped.

    Tasks carry the deliveries their commit sent. The relay sends the rest:
    those whose commit found the broker down, those due again after a failed
    run, and those whose lease ran out (the task was lost in the broker, or
    its Celery worker died for good). Each is sent under a fresh lease, so a
    late duplicate of an old task does nothing. Run one beside the Celery
    workers (more are safe: they claim with SKIP LOCKED), or one pass at a
    time from Celery beat (the ``messagebus.relay`` task).
    """

    role = "relay"
    outages = {DatabaseError: "the outbox", BrokerUnreachable: "the broker"}

    def run(self) -> int:
        if not isinstance(executors.get(), CeleryExecutor):
            raise ConfigurationError(
                "The relay sends deliveries to Celery, but MESSAGEBUS['EXECUTOR'] is "
                f"{conf.settings.EXECUTOR!r}: set it to 'celery'"
            )
        return super().run()

    def run_batch(self) -> int:
        """Claim one batch and send its tasks; the number claimed."""
        self.beat(self.processed)
        self._end_lost_runs()
        breaker.tick(self.using)
        # A task holds no concurrency slot until it runs: count the ones sent as running.
        claims = states.claim(self.using, self._batch(), in_flight=True)
        lease = claims[0].lease if claims else None
        if lease is not None:
            self.processed += send(
                [claim.ref for claim in claims], lease,
                [claim.stored if claim.runs == 0 else None for claim in claims],
            )  # fmt: skip
        return len(claims)
