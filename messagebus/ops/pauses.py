"""Pausing a handler: its deliveries wait, pending, until it is resumed.

A pause is stored, so it holds across restarts and for every process on the
database. Workers, the relay and the sweeps claim none of a paused handler's
deliveries, and one handed to a runner directly (the inline executor, a Celery
task) finds its handler paused as it would begin and stays pending. Deliveries
under way when it is paused finish. Each pause and resume is published as an
event (``HandlerPaused``, ``HandlerResumed``) in its transaction. Resumed, the
deliveries due go to the executor: workers are woken, the relay sends them, the
inline executor runs them in the caller.
"""

from __future__ import annotations

import logging
from functools import partial

from django.db import DEFAULT_DB_ALIAS, transaction

from ..core.events import HandlerPaused, HandlerResumed
from ..core.registry import registry
from ..exceptions import NotPausable
from ..handling import executor
from ..handling.unit_of_work import UnitOfWork
from ..models import Delivery, Pause
from ..outbox import states
from ..wording import plural

logger = logging.getLogger(__name__)


def pause(handler: str, *, by: str = "", reason: str = "", using: str = DEFAULT_DB_ALIAS) -> bool:
    """Pause the event handler named ``handler``; False if it was paused already."""
    _check(handler, using)
    with UnitOfWork(using) as uow:
        paused = states.handler_paused(using, handler, by, reason)
        if paused:
            uow.publish(HandlerPaused(handler, by, reason))
    if paused:
        logger.warning("Paused %s%s%s", handler, f" (by {by})" if by else "",
                       f": {reason}" if reason else "")  # fmt: skip
    return paused


def resume(handler: str, *, by: str = "", using: str = DEFAULT_DB_ALIAS) -> bool:
    """Resume ``handler`` and hand its due deliveries to the executor; False if it was
    not paused."""
    with UnitOfWork(using) as uow:
        refs = states.handler_resumed(using, handler)
        if refs is not None:
            uow.publish(HandlerResumed(handler, by))
    if refs is None:
        return False
    logger.warning("Resumed %s%s: %s", handler, f" (by {by})" if by else "",
                   plural(len(refs), "delivery due", "deliveries due"))  # fmt: skip
    # Once the resume commits (at once, outside a transaction): a rollback undoes both.
    transaction.on_commit(partial(executor.get().retried, refs), using=using)
    return True


def paused(using: str = DEFAULT_DB_ALIAS) -> list[Pause]:
    """The paused handlers, by name."""
    return list(Pause.objects.using(using))


def _check(name: str, using: str) -> None:
    handler = registry.named(name)
    if handler is None:
        # Registered in the workers only, maybe: the deliveries stored for it say it is one.
        if Delivery.objects.using(using).filter(handler=name).exists():
            return
        raise NotPausable(f"No event handler is registered as {name!r}, nor has any delivery")
    if handler.in_transaction:
        raise NotPausable(
            f"{name} runs in the transaction of the command that records its event: "
            "it has no deliveries to hold back"
        )
