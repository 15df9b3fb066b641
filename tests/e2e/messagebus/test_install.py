"""``messagebus`` as a package: its wheel, installed into a new virtual environment
beside a new ``django-admin startproject``, handles a command there.

Slow (a few seconds per process it starts). The wheel is built offline with this
environment's setuptools; its dependencies (Django, tenacity) come from a directory
of wheels kept in pytest's cache, fetched from PyPI the first time (or when the
declared dependencies change), then installed with ``--no-index``, so what the
wheel declares is what the new environment gets.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .conftest import PIP, ROOT, run

pytestmark = pytest.mark.packaging

SHOP = {
    "shop/__init__.py": "",
    "shop/messages.py": """
        from dataclasses import dataclass

        import messagebus


        @dataclass(frozen=True)
        class PlaceOrder(messagebus.Command):
            sku: str
            qty: int


        @dataclass(frozen=True)
        class OrderPlaced(messagebus.Event):
            order_id: int
            sku: str
        """,
    "shop/models.py": """
        import messagebus
        from django.db import models

        from .messages import OrderPlaced


        class Order(messagebus.Aggregate, models.Model):
            sku = models.CharField(max_length=20)
            qty = models.PositiveIntegerField()
            confirmed = models.BooleanField(default=False)

            def place(self):
                self.save()
                self.record(OrderPlaced(order_id=self.pk, sku=self.sku))
        """,
    "shop/handlers.py": """
        import messagebus

        from .messages import OrderPlaced, PlaceOrder
        from .models import Order


        @messagebus.handler
        def place_order(cmd: PlaceOrder, uow: messagebus.UnitOfWork) -> int:
            order = Order(sku=cmd.sku, qty=cmd.qty)
            order.place()
            return order.pk


        @messagebus.handler
        def confirm_order(event: OrderPlaced) -> None:
            Order.objects.filter(pk=event.order_id).update(confirmed=True)
        """,
}

SCRIPT = """
import json, messagebus
from messagebus.models import Delivery
from shop.messages import PlaceOrder
from shop.models import Order
order_id = messagebus.bus.handle(PlaceOrder(sku="LAMP", qty=3))
print(json.dumps({
    "result": order_id,
    "confirmed": Order.objects.get(pk=order_id).confirmed,
    "deliveries": [list(row) for row in Delivery.objects.values_list("handler", "status")],
    "messagebus": messagebus.__file__,
}))
"""


# The wheel's dependencies, and theirs.
PINNED = (
    "Django",
    "tenacity",
    "anyio",
    "asgiref",
    "msgspec",
    "sqlparse",
    "idna",
    "typing_extensions",
)


def test_the_wheel_holds_the_reusable_app_alone(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    dist_info = {name for name in names if name.split("/")[0].endswith(".dist-info")}
    package = names - dist_info

    assert wheel.name.startswith("django_messagebus-")
    # Every file of the app, its migrations, templates and management command included:
    # nothing of allocation, config, tests or bench.
    in_checkout = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "messagebus").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert package == in_checkout
    assert {
        "messagebus/migrations/0001_initial.py",
        "messagebus/templates/admin/messagebus/delivery/change_form.html",
        "messagebus/management/commands/messagebus.py",
        "messagebus/py.typed",
    } <= package


def test_the_wheel_declares_its_dependencies_and_extras(wheel):
    with zipfile.ZipFile(wheel) as archive:
        [name] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(name).decode())

    requires = meta.get_all("Requires-Dist")
    assert [Requirement(r) for r in requires if "extra ==" not in r] == [
        Requirement("Django>=5.2,<6.2"),
        Requirement("tenacity>=8.2"),
        Requirement("anyio>=4.5"),
        Requirement("asgiref>=3.8.1"),
        Requirement("cronsim>=2.6"),
        Requirement("msgspec>=0.19"),
    ]
    assert {
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "Framework :: Django :: 6.1",
    } <= set(meta.get_all("Classifier"))
    extras = {"postgres", "celery", "redis", "amqp", "nats", "kafka", "metrics", "tasks"}
    assert set(meta.get_all("Provides-Extra")) == extras
    for extra, package in [
        ("postgres", "psycopg"),
        ("celery", "celery"),
        ("redis", "redis"),
        ("amqp", "kombu"),
        ("nats", "nats-py"),
        ("kafka", "confluent-kafka"),
        ("metrics", "prometheus-client"),
        ("tasks", "django-tasks"),
    ]:
        assert any(r.startswith(package) and f'extra == "{extra}"' in r for r in requires)


def test_the_wheel_carries_its_licence_version_links_and_description(wheel):
    import messagebus

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [name] = [name for name in names if name.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(name).decode())
        [licence] = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
        licence_text = archive.read(licence).decode()

    assert meta["Version"] == messagebus.__version__
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert licence_text == (ROOT / "LICENSE").read_text()
    assert licence_text.startswith("BSD 3-Clause License")
    assert any(
        url.startswith("Architecture Patterns with Python, https://")
        for url in meta.get_all("Project-URL")
    )
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# ")  # the README, as the long description


def install(wheel: Path, python: Path, wheels: Path, tmp: Path) -> None:
    """Install ``wheel`` and what it declares into ``python``'s environment, from ``wheels``
    only, at this environment's versions (requirements.txt); fetch them from PyPI if missing.
    """
    constraints = tmp / "constraints.txt"
    constraints.write_text("".join(f"{name}=={metadata.version(name)}\n" for name in PINNED))
    offline = [*PIP, "--python", python, "install", "--no-index", "--find-links", wheels]
    offline += ["-c", constraints, wheel]
    if subprocess.run(offline, capture_output=True, timeout=120).returncode == 0:
        return
    fetch = [*PIP, "download", "--timeout", "30", "--only-binary=:all:", "--dest", wheels]
    fetch += ["-c", constraints, wheel]
    download = subprocess.run(fetch, capture_output=True, text=True, timeout=180)
    for copy in wheels.glob("django_messagebus-*"):
        copy.unlink()
    if download.returncode != 0:
        pytest.skip(f"needs PyPI once, to fetch the wheel's dependencies: {download.stderr[-500:]}")
    run(*offline, cwd=tmp)


@pytest.fixture
def wheels(request, tmp_path) -> Path:
    """Dependency wheels, kept between runs in pytest's cache."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("messagebus-wheels") if cache is not None else tmp_path / "wheels"


def test_a_new_project_handles_a_command_through_the_installed_bus(wheel, wheels, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    install(wheel, python, wheels, tmp_path)

    this_project = {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV"}
    env = {key: value for key, value in os.environ.items() if key not in this_project}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    project = tmp_path / "project"
    project.mkdir()
    run(venv / "bin" / "django-admin", "startproject", "mysite", project, cwd=tmp_path, env=env)
    for name, text in SHOP.items():
        (project / name).parent.mkdir(exist_ok=True)
        (project / name).write_text(textwrap.dedent(text).lstrip())
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + '\nINSTALLED_APPS += ["messagebus", "shop"]\n')

    def manage(*args: str):
        return run(python, "manage.py", *args, cwd=project, env=env)

    manage("check", "--fail-level", "WARNING")
    manage("makemigrations", "shop")
    manage("migrate", "--noinput")
    shell = manage("shell", "--no-imports", "-c", SCRIPT)
    status = manage("messagebus", "status")
    worker = manage("messagebus", "worker", "--once")

    printed = json.loads(shell.stdout.strip().splitlines()[-1])
    assert printed["result"] == 1
    assert printed["confirmed"] is True  # the event's handler ran, after the commit
    assert printed["deliveries"] == [["shop.handlers.confirm_order", "done"]]
    assert Path(printed["messagebus"]).is_relative_to(venv)  # the installed copy, not the checkout
    assert re.search(r"done\W+1\b", status.stdout, re.IGNORECASE), status.stdout
    # No LOGGING in a new project: the bus's INFO lines still show, through its own handler.
    started = r"INFO messagebus\.processes\.worker Worker \S+ started on database"
    assert re.search(started, worker.stderr)
