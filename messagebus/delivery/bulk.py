"""Claimed deliveries sent together: a handler with a ``bulk`` (``Handler.bulk``: a
broker's batched publish) takes a worker's claimed deliveries of it at once.

Each delivery's message is prepared in its own span, then the handler's group is
sent in one go, outside any transaction: a broker's confirmations come from the
broker, not from a commit. The ones confirmed are marked done together (if still
held under their lease); each refused one is a failed call of its own, judged by
its policy as any other, while the rest of the group stays done. A delivery sent
and then not marked (its runner stopped, its lease lost) is sent again: at least
once, as every publish is.

Only what a batch would take comes here: claimed deliveries of handlers neither
ordered (one refused would let the next of its key go first) nor capped.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.utils import timezone

from ..core.registry import Handler, registry
from ..exceptions import BulkAnswerError
from ..observe import logs, metrics, tracing
from ..outbox import states
from . import run as engine

logger = logs.get_logger(__name__)


def takes(claim: states.Claim) -> bool:
    """Whether a claimed delivery is sent with the others of its handler."""
    handler = registry.named(claim.ref.handler)
    if handler is None or handler.bulk is None or claim.lease is None:
        return False
    policy = engine.policy_of(handler)
    return policy.batched and not policy.ordered and policy.max_concurrency is None


def deliver(claims: Sequence[states.Claim], *, stopping: Callable[[], bool]) -> int:
    """Send these claimed deliveries (each ``takes``), each handler's together; how many
    were dealt with. Once ``stopping()``, none: they are handed back."""
    if not claims:
        return 0
    if stopping():
        states.released(claims[0].ref.using, claims)
        return 0
    begun = timezone.now()
    groups: dict[Handler, list[engine.Job]] = {}
    for claim in claims:
        job = engine.resolve(claim)  # None: dealt with (dead, waiting for its handler)
        if job is not None:
            groups.setdefault(job.handler, []).append(job)
    for handler, jobs in groups.items():
        _send(handler, jobs, begun)
    return len(claims)


def _send(handler: Handler, jobs: list[engine.Job], begun: dt.datetime) -> None:
    assert handler.bulk is not None
    started = time.perf_counter()
    ready: list[tuple[engine.Job, tracing.Span]] = []
    prepared: list[Any] = []
    for job in jobs:
        span = job.span()
        with logs.handling(job.event, handler.name), span:
            token = engine.current_job.set(job)  # its claim, for prepare (when stored)
            try:
                prepared.append(handler.bulk.prepare(job.event))
            except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
                engine.failed(job, exc, begun)
                continue
            finally:
                engine.current_job.reset(token)
            span.hold()
        ready.append((job, span))
    if not ready:
        return
    try:
        answers = handler.bulk.send(prepared)
    except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
        answers = [exc] * len(ready)
    if len(answers) != len(ready):
        error = BulkAnswerError(f"{handler} answered {len(answers)} of {len(ready)} sent")
        answers = [error] * len(ready)
    taken = (time.perf_counter() - started) / len(ready)
    sent = list(zip(ready, answers, strict=True))
    ours = states.finished([job.claim for (job, _), answer in sent if answer is None])
    for (job, span), answer in sent:
        if answer is not None:
            with logs.handling(job.event, handler.name), span:
                engine.failed(job, answer, begun)
        elif job.claim.id in ours:
            metrics.claimed(job.claim, begun)
            tracing.finish(span, "done")
            engine.returned(job, taken)
            metrics.ended(handler.name, "done")
        else:
            tracing.finish(span, "taken over")
            logger.warning("%s was sent, but another runner had taken it over", job)
