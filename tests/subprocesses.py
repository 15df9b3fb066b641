"""A long-running subprocess of a test (a worker, a consumer), watched as it writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from django.conf import settings

from tests.conftest import ROOT, database_url


class Watched:
    """Starts ``args`` (in a process group of its own) and returns once a line of its
    output holds ``ready``; ``output`` is what it wrote so far."""

    def __init__(self, args: list[str], *, env: dict[str, str], ready: str, what: str) -> None:
        self.lines: list[str] = []
        self._ready = ready
        self._started = threading.Event()
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        if not self._started.wait(60):
            self.kill()
            raise AssertionError(f"{what} did not start:\n{self.output}")

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self._ready in line:
                self._started.set()

    def kill(self) -> None:
        """SIGKILL, the process and any child it has: no chance to finish anything."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then its exit status and output (SIGKILL if it takes over 30 s)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode, self.output


class CeleryWorker(Watched):
    """A `celery -A config worker` subprocess on the test database and this run's queue
    (``options``: more of the command's options)."""

    def __init__(self, name: str, *options: str, **env: str) -> None:
        super().__init__(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--concurrency", "1",
             "--hostname", f"{name}@%h", "--queues", settings.CELERY_TASK_DEFAULT_QUEUE,
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
             *options],
            env={**celery_env(), **env}, ready=" ready.", what="the Celery worker",
        )  # fmt: skip


def celery_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess on the test database, with the celery executor."""
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MESSAGEBUS_EXECUTOR": "celery",
        "LOG_LEVEL": "INFO",
        **extra,
    }


def started_workers(
    count: int, env: dict[str, str], *, batch: int = 5, interval: float = 0.2
) -> list[Watched]:
    """``count`` ``messagebus worker`` processes on the test database, each started (more
    of their environment in ``env``)."""
    command = [
        sys.executable, str(ROOT / "manage.py"), "messagebus", "worker",
        "--batch", str(batch), "--interval", str(interval),
    ]  # fmt: skip
    full = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO", **env}
    return [
        Watched(command, env=full, ready="started on database", what="a worker")
        for _ in range(count)
    ]
