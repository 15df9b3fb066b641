"""``messagebus.testing`` outside pytest, with the wheel's declared dependencies and nothing
else: an interpreter started with ``-I -S`` (no site-packages, no environment) is given
only the distributions ``pyproject.toml`` names, and theirs, so pytest cannot be imported
there, and neither can anything the app needs but does not declare.
"""

import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from .conftest import ROOT

SCRIPT = """
import importlib.util
import sys

sys.path[:0] = [{site!r}]
assert importlib.util.find_spec("pytest") is None, "pytest is importable here"

import django
from django.conf import settings
from django.core.management import call_command

settings.configure(
    INSTALLED_APPS=["messagebus", "orders"],
    DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}},
    MESSAGEBUS={{"DEPENDENCIES": {{"mailer": "orders.mail.Mailer"}}}},
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    USE_TZ=True,
)
django.setup()
call_command("migrate", verbosity=0)

import messagebus
from messagebus.testing import capture_messages
from orders.commands import PlaceOrder
from orders.events import OrderPlaced


class FakeMailer:
    def __init__(self):
        self.sent = []

    def send_confirmation(self, orderid):
        self.sent.append(orderid)


mailer = FakeMailer()
with capture_messages() as captured, messagebus.dependencies.override(mailer=mailer):
    messagebus.bus.handle(PlaceOrder("o1", "LAMP", 1))
captured.assert_handled(PlaceOrder, sku="LAMP")
captured.assert_published(OrderPlaced, orderid="o1")
assert mailer.sent == ["o1"], mailer.sent
assert "pytest" not in sys.modules
print("handled without pytest")
"""


def declared_closure() -> list[metadata.Distribution]:
    """The distributions pyproject.toml's dependencies name, and theirs (no extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    found: dict[str, metadata.Distribution] = {}
    while wanted:
        requirement = wanted.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        dist = metadata.distribution(requirement.name)
        if dist.name.lower() in found:
            continue
        found[dist.name.lower()] = dist
        wanted += [Requirement(text) for text in dist.requires or ()]
    return list(found.values())


def importable(dist: metadata.Distribution) -> set[str]:
    """The top-level modules and packages a distribution installs."""
    names = set()
    for file in dist.files or ():
        top = file.parts[0]
        if len(file.parts) == 1 and not top.endswith((".py", ".so")):
            continue
        if top.endswith((".dist-info", ".data")) or top in ("..", "__pycache__"):
            continue
        names.add(top)
    return names


def test_messagebus_testing_works_with_the_declared_dependencies_alone(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    dists = declared_closure()
    for dist in dists:
        base = Path(dist.locate_file(""))
        for name in importable(dist):
            (site / name).symlink_to(base / name)
    (site / "messagebus").symlink_to(ROOT / "messagebus")
    (site / "orders").symlink_to(ROOT / "docs" / "examples" / "orders")

    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", textwrap.dedent(SCRIPT).format(site=str(site))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "handled without pytest"
    assert {"django", "tenacity", "anyio", "asgiref"} <= {d.name.lower() for d in dists}
    assert not (site / "pytest").exists() and not (site / "_pytest").exists()


def test_the_former_plugin_name_still_gives_the_fixtures(tmp_path):
    """``pytest_plugins = ["messagebus.testing"]``, as projects wrote it before the fixtures
    moved to ``messagebus.pytest_plugin``, loads them."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["messagebus.testing"]\n')
    (tmp_path / "test_fixtures.py").write_text(
        "def test_they_are_there(messagebus_registry, messagebus_capture):\n"
        "    assert messagebus_capture.handled == []\n"
    )
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [
            *pytest,
            "--ds",
            "tests.settings",
            "--rootdir",
            str(tmp_path),
            tmp_path / "test_fixtures.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
