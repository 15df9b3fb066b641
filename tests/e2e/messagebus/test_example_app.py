"""The guide's app (``docs/examples/orders``) in a new ``django-admin startproject``, with
the bus installed from its wheel: each step the guide shows, run as a new user runs it.

Offline: the new environment gets the wheel alone (``--no-deps``) and sees this
environment's packages (Django, pytest, ...) through a ``.pth`` line, so the
``messagebus`` it imports is the wheel's, not the checkout's.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import PIP, ROOT, run

pytestmark = pytest.mark.packaging

EXAMPLES = ROOT / "docs" / "examples"
PLACE_ORDER = """
import messagebus
from orders.commands import PlaceOrder
print(messagebus.bus.handle(PlaceOrder('o1', 'LAMP', 10)))
"""


@pytest.fixture(scope="module")
def project(wheel, tmp_path_factory):
    """A new project with the guide's app and settings: (its python, its directory)."""
    tmp = tmp_path_factory.mktemp("example")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "this_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(*PIP, "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=tmp)

    directory = tmp / "project"
    directory.mkdir()
    run(python, "-m", "django", "startproject", "mysite", directory, cwd=tmp, env=clean_env())
    shutil.copytree(EXAMPLES / "orders", directory / "orders")
    shutil.copy(EXAMPLES / "conftest.py", directory / "conftest.py")
    settings = directory / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + (EXAMPLES / "settings.py").read_text())
    return python, directory


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what points at this project."""
    ours = {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("MESSAGEBUS_")}
    return {**env, **extra}


def manage(project, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    python, directory = project
    return run(python, "manage.py", *args, cwd=directory, env=clean_env(**env), timeout=60)


def test_the_guides_steps_run_in_a_new_project(project):
    python, directory = project

    manage(project, "check", "--fail-level", "WARNING")
    manage(project, "makemigrations", "--check", "--dry-run")  # its migration is complete
    manage(project, "migrate", "--noinput")
    placed = manage(project, "shell", "--no-imports", "-c", PLACE_ORDER)
    where = run(python, "-c", "import messagebus; print(messagebus.__file__)", cwd=directory)

    email, _, returned = placed.stdout.rpartition("-" * 79 + "\n")
    assert "Subject: Order o1 placed" in email  # the event's handler, after the commit
    assert returned == "1\n"  # then the order's id, from the command's handler
    assert Path(where.stdout.strip()).is_relative_to(python.parent.parent)  # the wheel's copy


def test_messagebus_executor_in_the_environment_hands_events_to_workers(project):
    manage(project, "migrate", "--noinput")
    command = PLACE_ORDER.replace("'o1'", "'o2'")

    placed = manage(project, "shell", "--no-imports", "-c", command, MESSAGEBUS_EXECUTOR="worker")
    worker = manage(project, "messagebus", "worker", "--once", MESSAGEBUS_EXECUTOR="worker")

    assert "Subject:" not in placed.stdout  # stored for a worker, not run inline
    assert "Subject: Order o2 placed" in worker.stdout


# The README's task, and one that fails, in the new project; its settings as the README has them.
TASKS_MODULE = """
try:
    from django.tasks import task  # Django 6.0 and later
except ImportError:
    from django_tasks import task  # Django 5.2: the django-tasks backport


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def fail() -> None:
    raise ValueError("no luck")
"""
TASKS_SETTINGS = """
from .settings import *  # noqa: F403

TASKS = {"default": {"BACKEND": "messagebus.task_backend.OutboxBackend"}}
MESSAGEBUS = {**MESSAGEBUS, "EXECUTOR": "worker", "RETRY_ATTEMPTS": 1, "MAX_DELIVERIES": 1}
"""
RESULTS = """
from django.contrib.auth.models import User
from django.test import Client
from django.test.utils import setup_test_environment
from django.urls import reverse

from messagebus.models import Delivery
from orders.tasks import add, fail

setup_test_environment()  # the test client's host allowed
done, dead = add.get_result("{done}"), fail.get_result("{dead}")
print(done.status, done.return_value)
print(dead.status, dead.errors[0].exception_class_path)
row = Delivery.objects.get(event_id="{dead}")
client = Client()
client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
page = client.get(reverse("admin:messagebus_delivery_change", args=[row.pk])).content.decode()
retry = reverse("admin:messagebus_delivery_retry", args=[row.pk])
print(f'<form method="post" action="{{retry}}">' in page and "Retry now" in page)
"""


def test_the_readmes_task_runs_on_a_worker_of_a_new_project(project):
    _, directory = project
    (directory / "orders" / "tasks.py").write_text(TASKS_MODULE)
    (directory / "mysite" / "tasks_settings.py").write_text(TASKS_SETTINGS)
    settings = {"DJANGO_SETTINGS_MODULE": "mysite.tasks_settings"}
    manage(project, "check", "--fail-level", "WARNING", **settings)
    manage(project, "migrate", "--noinput", **settings)

    enqueue = "from orders.tasks import add, fail; print(add.enqueue(2, 3).id, fail.enqueue().id)"
    done, dead = manage(project, "shell", "--no-imports", "-c", enqueue, **settings).stdout.split()
    manage(project, "messagebus", "worker", "--once", **settings)
    shown = manage(project, "shell", "--no-imports", "-c", RESULTS.format(done=done, dead=dead),
                   **settings)  # fmt: skip

    assert shown.stdout.splitlines()[-3:] == [
        "SUCCESSFUL 5",
        "FAILED builtins.ValueError",
        "True",  # dead in the admin, with its Retry button
    ]


def test_the_guides_test_passes_there(project):
    python, directory = project

    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--ds", "mysite.settings"]
    result = subprocess.run(
        [*pytest, "orders/tests.py"],
        cwd=directory,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
