"""``manage.py messagebus worker|relay|consume|status|retry|prune``."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.models import Count, Q
from django.utils import timezone

from messagebus import compat, executors, outbox
from messagebus.core.periodic import schedules
from messagebus.core.registry import registry
from messagebus.delivery.run import policy_of
from messagebus.exceptions import BrokerUnreachable, ConfigurationError, NotPausable
from messagebus.handling import scheduling
from messagebus.models import Delivery, InboxMessage
from messagebus.ops import health, pauses, prometheus, retention
from messagebus.outbox import ordering, slots
from messagebus.processes.worker import Worker
from messagebus.wording import first_line, listed, plural

logger = logging.getLogger(__name__)


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be 1 or more")
    return number


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return number


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address") from None


def _exit(code: int) -> None:
    """Exit without waiting for threads (a handler's cannot be stopped): their open
    transactions roll back as the connections close."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _who() -> str:
    """Who runs this command, as the pauses record it: the login, and the machine."""
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER", "")
    return f"{user}@{socket.gethostname()}" if user else socket.gethostname()


def _capped(using: str) -> list[dict[str, Any]]:
    """The handlers with a max_concurrency (and any other whose slots are taken): each
    one's cap, key and deliveries running now (the slots taken)."""
    running = slots.taken(using)
    names = sorted({name for name, _ in registry.capped()} | set(running))
    found = []
    for name in names:
        policy = policy_of(name)
        found.append({
            "handler": name, "max_concurrency": policy.max_concurrency,
            "concurrency_key": policy.concurrency_key, "running": running.get(name, 0),
        })  # fmt: skip
    return found


def _periodic(using: str) -> list[dict[str, Any]]:
    """Each periodic schedule, with its last tick recorded and its next."""
    last = scheduling.last_ticks(using)
    now = timezone.now()
    return [
        {
            "name": s.name,
            "cron": s.cron,
            "timezone": s.timezone,
            "missed": s.missed,
            "last_tick": last[s.name].isoformat() if s.name in last else None,
            "next_tick": s.following(now).isoformat(),
        }
        for s in schedules.all()
    ]


class Command(BaseCommand):
    help = (
        "Run and inspect event deliveries: worker, relay, consume, status, retry, pause, "
        "resume, prune."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        common = CommandParser(add_help=False)
        common.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias.")
        # Django's own options work after the action too: `messagebus worker -v 2`.
        compat.copy_options(parser, common, leave={"help", "database"})
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        def action(name: str, help: str) -> argparse.ArgumentParser:
            return sub.add_parser(name, help=help, description=help, parents=[common])

        worker = action("worker", "Run due deliveries until stopped.")
        worker.add_argument("--once", action="store_true", help="Exit when nothing is due.")
        worker.add_argument(
            "--batch",
            type=positive_int,
            help="Deliveries claimed, and run in one transaction, at a time "
            "(default: MESSAGEBUS['BATCH_SIZE']).",
        )
        worker.add_argument(
            "--limit", type=positive_int, metavar="N", help="Exit after N deliveries."
        )
        worker.add_argument("--interval", type=seconds, help="Seconds to sleep when idle.")
        worker.add_argument(
            "--queue", action="append", default=[], dest="queues", metavar="NAME",
            help="Run only the deliveries of this queue (repeat for more): tasks' queue_name; "
            "events' deliveries are in 'default' (default: every queue).",
        )  # fmt: skip
        worker.add_argument(
            "--concurrency", type=positive_int, default=1, metavar="N",
            help="Deliveries run at once: async handlers on an event loop, sync ones in "
            "threads, each in a transaction of its own (default 1: a batch in one).",
        )  # fmt: skip
        worker.add_argument(
            "--metrics-port", type=positive_int, metavar="PORT",
            help="Serve this worker's Prometheus metrics on this port (see --metrics-bind).",
        )  # fmt: skip
        worker.add_argument(
            "--metrics-bind", type=ip_address, default="127.0.0.1", metavar="ADDRESS",
            help="The address --metrics-port listens on (default 127.0.0.1: this machine "
            "only; 0.0.0.0 for every interface, behind a firewall).",
        )  # fmt: skip
        worker.add_argument(
            "--grace", type=seconds, metavar="SECONDS",
            help="On SIGTERM, how long running deliveries may take to finish before the "
            "async ones are cancelled and handed back (default: MESSAGEBUS['SHUTDOWN_GRACE']).",
        )  # fmt: skip

        relay = action("relay", "Send due deliveries to Celery until stopped (executor 'celery').")
        relay.add_argument("--once", action="store_true", help="One pass, then exit.")
        relay.add_argument("--interval", type=seconds, help="Seconds to sleep when idle.")

        consume = action("consume", "Handle messages from other services' broker until stopped.")
        consume.add_argument(
            "--limit", type=positive_int, metavar="N",
            help="Exit once N messages have come in (the last batch is taken whole).",
        )  # fmt: skip

        status = action("status", "Counts by status, lag, rate, dead by handler and error.")
        status.add_argument(
            "--json", action="store_true", dest="json_output", help="One JSON object, for scripts."
        )

        retry = action("retry", "Run dead (or waiting) deliveries again.")
        which = retry.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "ids", nargs="*", type=positive_int, default=[], metavar="ID",
            help="Ids of the deliveries (as in the admin and in `status`).",
        )  # fmt: skip
        which.add_argument("--all-dead", action="store_true", help="Every dead delivery.")
        which.add_argument("--handler", help="Dead deliveries to this handler (dotted name).")
        retry.add_argument(
            "--pending", action="store_true",
            help="With --handler: its pending deliveries (waiting for their next try), made "
            "due now, instead of its dead ones.",
        )  # fmt: skip

        pause = action("pause", "Start none of a handler's deliveries until it is resumed.")
        pause.add_argument("handler", help="The event handler (dotted name, as in `status`).")
        pause.add_argument("--reason", default="", help="Why, shown in status and the admin.")
        resume = action("resume", "Start a paused handler's deliveries again.")
        resume.add_argument("handler", help="The event handler (dotted name).")

        prune = action(
            "prune",
            "Delete what ended over --days ago: finished deliveries and their events, "
            "periodic ticks, inbox records, ended process manager instances, heartbeats.",
        )
        prune.add_argument(
            "--days", type=positive_int, default=30, help="Older than this (default 30)."
        )
        prune.add_argument(
            "--dry-run", action="store_true", help="Say what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, action: str, database: str, **options: Any) -> None:
        if database not in connections:
            raise CommandError(f"Unknown database {database!r}")
        try:
            getattr(self, f"handle_{action}")(database, **options)
        except DatabaseError as exc:
            raise CommandError(f"Cannot use the database {database!r}: {first_line(exc)}") from exc

    def handle_worker(
        self,
        using: str,
        *,
        once: bool,
        batch: int | None,
        limit: int | None,
        interval: float | None,
        concurrency: int,
        grace: float | None,
        metrics_port: int | None,
        metrics_bind: str,
        queues: list[str],
        **options: Any,
    ) -> None:
        if metrics_port is not None:
            try:
                prometheus.serve(metrics_port, metrics_bind)
            except (ImportError, OSError) as exc:
                raise CommandError(
                    f"Cannot serve metrics on {metrics_bind} port {metrics_port}: {exc}"
                ) from exc
            logger.info("Metrics on http://%s:%d/metrics", metrics_bind, metrics_port)
        worker = Worker(
            batch=batch, once=once, limit=limit, poll_interval=interval, using=using,
            concurrency=concurrency, grace=grace, queues=queues,
        )  # fmt: skip
        signal.signal(signal.SIGTERM, worker.on_signal)
        signal.signal(signal.SIGINT, worker.on_signal)
        try:
            processed = worker.run()
        except SystemExit as exc:  # asked twice: exit now, whatever threads still run
            self.stderr.write(str(exc))
            _exit(1)
        self.stdout.write(f"Processed {plural(processed, 'delivery', 'deliveries')}.")
        if worker.abandoned:  # a thread cannot be stopped: exit without it, rolling it back
            _exit(0)

    def handle_relay(
        self, using: str, *, once: bool, interval: float | None, **options: Any
    ) -> None:
        from messagebus.processes.relay import Relay  # imports Celery

        relay = Relay(once=once, poll_interval=interval, using=using)
        signal.signal(signal.SIGTERM, relay.on_signal)
        signal.signal(signal.SIGINT, relay.on_signal)
        try:
            sent = relay.run()
        except (ConfigurationError, BrokerUnreachable) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Sent {plural(sent, 'delivery', 'deliveries')} to Celery.")

    def handle_consume(self, using: str, *, limit: int | None, **options: Any) -> None:
        from messagebus.processes.consumer import Consumer

        consumer = Consumer(using, limit=limit)
        signal.signal(signal.SIGTERM, consumer.on_signal)
        signal.signal(signal.SIGINT, consumer.on_signal)
        try:
            received = consumer.run()
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Received {plural(received, 'message')}.")

    def handle_status(self, using: str, *, json_output: bool, **options: Any) -> None:
        outbox = health.figures(using)
        dead = list(health.dead_by_handler(using)[:20])
        beats = list(health.workers_seen(using))
        paused = pauses.paused(using)
        capped = _capped(using)
        blocked = ordering.blocked(using)
        last = None if beats else health.last_seen(using)
        received = dict(
            InboxMessage.objects.using(using)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by()
        )
        inbox = {status.value: received.get(status.value, 0) for status in InboxMessage.Status}
        periodic = _periodic(using)
        if json_output:
            by_handler = [
                {
                    "handler": row["handler"],
                    "error": first_line(row["error"], 160),
                    "count": row["count"],
                }
                for row in dead
            ]
            workers = [
                {"id": w.id, "seen_at": w.seen_at.isoformat(), "processed": w.processed}
                for w in beats
            ]
            report = {
                **outbox, "workers": workers, "dead_by_handler": by_handler, "inbox": inbox,
                "paused_handlers": [
                    {"handler": p.handler, "paused_by": p.paused_by,
                     "paused_at": p.paused_at.isoformat(), "reason": p.reason}
                    for p in paused
                ],
                "capped_handlers": capped,
                "blocked_keys": [key._asdict() for key in blocked],
                "periodic": periodic,
                "last_seen": last and {
                    "id": last.id, "seen_at": last.seen_at.isoformat(), "stopped": last.stopped
                },
            }  # fmt: skip
            self.stdout.write(json.dumps(report, indent=2))
            return
        for status in Delivery.Status:
            self.stdout.write(f"{status.label:<10} {outbox['statuses'][status.value]}")
        self.stdout.write(
            f"Due now: {outbox['due']}; the oldest has waited {outbox['lag_seconds']:.0f}s. "
            f"Done in the last minute: {outbox['done_last_minute']}."
        )
        if outbox["scheduled"]:
            self.stdout.write(
                f"{outbox['scheduled']} scheduled, next due at {outbox['next_scheduled_at']}."
            )
        for schedule in periodic:
            self.stdout.write(
                f"Periodic: {schedule['name']} ({schedule['cron']}, {schedule['timezone']}, "
                f"missed: {schedule['missed']}): last tick {schedule['last_tick'] or 'none yet'}, "
                f"next {schedule['next_tick']}."
            )
        if outbox["waiting_for_a_handler"]:
            self.stdout.write(health.waiting_for_a_handler(outbox["waiting_for_a_handler"]) + ".")
        for pause in paused:
            by = f" by {pause.paused_by}" if pause.paused_by else ""
            why = f": {pause.reason}" if pause.reason else ""
            if registry.named(pause.handler) is None:
                why += " (no handler of that name is registered in this process)"
            if pause.until is not None:
                why += f"; a probe {'runs' if pause.probe else f'from {pause.until:%H:%M:%S}'}"
            self.stdout.write(
                f"Paused: {pause.handler}{by} at {pause.paused_at:%Y-%m-%d %H:%M:%S}{why}."
            )
        if outbox["paused"]:
            many = plural(outbox["paused"], "delivery waits", "deliveries wait")
            self.stdout.write(f"{many} for a paused handler.")
        for cap in capped:
            most = cap["max_concurrency"]
            at_most = (
                ""
                if most is None
                else f"at most {most} at once"
                + (f" per {cap['concurrency_key']}" if cap["concurrency_key"] else "")
            )
            if registry.named(cap["handler"]) is None:
                at_most = "no handler of that name is registered in this process"
            self.stdout.write(f"Capped: {cap['handler']}: {at_most}; {cap['running']} running.")
        for key in blocked:
            self.stdout.write(f"Blocked: {key} ({key.waiting} waiting).")
        self.stdout.write(
            f"Workers seen in the last minute: {len(beats)}"
            + "".join(f"\n  {w.id}: {plural(w.processed, 'delivery', 'deliveries')}, "
                      f"seen {w.seen_at:%H:%M:%S}" for w in beats)
        )  # fmt: skip
        if last:
            how = "when it stopped" if last.stopped else "without saying it stopped"
            self.stdout.write(f"  Last seen: {last.id} at {last.seen_at:%Y-%m-%d %H:%M:%S}, {how}.")
        self.stdout.write(f"Inbox: {inbox['handled']} handled, {inbox['skipped']} skipped.")
        if dead:
            self.stdout.write("Dead, by handler and error:")
            for row in dead:
                self.stdout.write(
                    f"  {row['count']:>5}  {row['handler']}: {first_line(row['error'], 160)}"
                )

    def handle_retry(
        self,
        using: str,
        *,
        ids: list[int],
        all_dead: bool,
        handler: str | None,
        pending: bool,
        **options: Any,
    ) -> None:
        deliveries = Delivery.objects.using(using)
        if pending and not handler:
            raise CommandError("--pending goes with --handler: whose pending deliveries?")
        if handler:
            self._retry_handler(using, handler, pending)
            return
        if ids:
            statuses = dict(deliveries.filter(pk__in=ids).values_list("pk", "status"))
            missing = sorted(set(ids) - set(statuses))
            if missing:
                raise CommandError(f"No delivery with id {', '.join(map(str, missing))}")
            for pk, status in sorted(statuses.items()):
                if status not in Delivery.UNFINISHED:
                    raise CommandError(
                        f"Delivery {pk} is {status}; only dead or pending deliveries can be retried"
                    )
            pks = sorted(statuses)
        else:
            pks = list(deliveries.dead().values_list("pk", flat=True))
        self._retry(using, pks)

    def _retry_handler(self, using: str, handler: str, pending: bool) -> None:
        """A handler's dead deliveries (or, ``pending``, those waiting for a try) again."""
        mine = Delivery.objects.using(using).filter(handler=handler)
        # Pending, and not running now: no lease, or one its runner left to run out.
        waiting = mine.pending().filter(
            Q(lease_until__isnull=True) | Q(lease_until__lt=timezone.now())
        )
        chosen = waiting if pending else mine.dead()
        pks = list(chosen.values_list("pk", flat=True))
        if pks:
            self._retry(using, pks)
        elif pending:
            self.stdout.write(f"Nothing to retry. No delivery to {handler} is pending.")
        else:
            count = waiting.count()
            self.stdout.write(
                f"Nothing to retry. --handler retries dead deliveries: none to {handler} is dead."
                + (
                    f" Pending to it: {plural(count, 'delivery', 'deliveries')}; add --pending "
                    "to make them due now."
                    if count
                    else ""
                )
            )

    def _retry(self, using: str, pks: list[int]) -> None:
        deliveries = Delivery.objects.using(using)
        if not pks:
            self.stdout.write("Nothing to retry.")
            return
        count = executors.retry(using, pks)
        self.stdout.write(f"Requeued {plural(count, 'delivery', 'deliveries')}.")
        statuses = dict(
            deliveries.filter(pk__in=pks).values_list("status").annotate(n=Count("id")).order_by()
        )
        self.stdout.write(", ".join(f"{status}: {n}" for status, n in sorted(statuses.items())))

    def handle_pause(self, using: str, *, handler: str, reason: str, **options: Any) -> None:
        try:
            done = pauses.pause(handler, by=_who(), reason=reason, using=using)
        except NotPausable as exc:
            raise CommandError(str(exc)) from exc
        waiting = Delivery.objects.using(using).pending().filter(handler=handler).count()
        said = "Paused" if done else "Already paused:"
        self.stdout.write(
            f"{said} {handler}; {plural(waiting, 'delivery waits', 'deliveries wait')}."
        )

    def handle_resume(self, using: str, *, handler: str, **options: Any) -> None:
        if not pauses.resume(handler, by=_who(), using=using):
            raise CommandError(f"{handler} is not paused")
        self.stdout.write(f"Resumed {handler}.")

    def handle_prune(self, using: str, *, days: int, dry_run: bool, **options: Any) -> None:
        cutoff = timezone.now() - timedelta(days=days)
        if dry_run:
            deliveries, events = outbox.prunable(using, cutoff)
            verb = "Would delete"
        else:
            deliveries, events = outbox.prune(using, cutoff)
            verb = "Deleted"
        self.stdout.write(
            f"{verb} {plural(deliveries, 'delivery', 'deliveries')} and "
            f"{plural(events, 'event')} finished over {plural(days, 'day')} ago."
        )
        counted = [
            (record, record.rows.count() if dry_run else record.delete())
            for record in retention.kept(using, cutoff)
        ]
        if ended := [record.describe(count) for record, count in counted if count]:
            self.stdout.write(f"{verb} {listed(ended)} from before then.")
