"""No import cycles in messagebus, and no import of the domain app."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "messagebus"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(
    module_name(path) for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts
)


def imported_by(path: Path) -> set[str]:
    """The messagebus modules ``path`` imports, anywhere in it, TYPE_CHECKING blocks and
    functions included: a circle there is a circle in the design."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def test_no_module_of_messagebus_imports_one_that_imports_it_back():
    graph = {module_name(p): imported_by(p) for p in PACKAGE.rglob("*.py")
             if "migrations" not in p.parts}  # fmt: skip
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif len(path) < 30:
                visit(target, [*path, target])

    for module in graph:
        visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


# The layers, lowest first: a module imports only from its own layer and those before it.
# What no layer names (the package itself, apps, admin, checks, tasks, testing, the
# management command, the old paths kept for a while) sits on top and may import any.
LAYERS = [
    ("messagebus.conf", "messagebus.exceptions", "messagebus.compat", "messagebus.wording",
     "messagebus.models", "messagebus.moved"),
    ("messagebus.core",),
    ("messagebus.observe",),
    ("messagebus.outbox",),
    ("messagebus.handling",),
    ("messagebus.delivery",),
    ("messagebus.executors",),
    ("messagebus.external",),
    ("messagebus.task_backend",),
    ("messagebus.sagas",),
    ("messagebus.processes",),
    ("messagebus.ops",),
]  # fmt: skip


def layer(module: str) -> int:
    for number, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    return len(LAYERS)


def test_each_layer_imports_only_the_layers_under_it():
    upward = [
        f"{name} -> {target}"
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts
        for name in [module_name(path)]
        for target in sorted(imported_by(path))
        if layer(target) > layer(name)
    ]
    assert not upward, upward


def test_every_module_of_the_engine_and_below_is_in_a_layer():
    assert layer("messagebus.delivery.run") < layer("messagebus.processes.worker") < len(LAYERS)
    top = {name for name in MODULES if layer(name) == len(LAYERS)}
    assert top == {
        "messagebus", "messagebus.admin", "messagebus.apps", "messagebus.checks",
        "messagebus.failures", "messagebus.health", "messagebus.inbound", "messagebus.logs",
        "messagebus.worker",
        "messagebus.management.commands.messagebus", "messagebus.metrics",
        "messagebus.pytest_plugin", "messagebus.tasks", "messagebus.testing",
        "messagebus.unit_of_work",
    }  # fmt: skip


def test_messagebus_never_imports_the_domain_app():
    for path in PACKAGE.rglob("*.py"):
        assert "allocation" not in path.read_text(), path


FIRST = """
import importlib, sys
import django
from django.conf import settings
from django.core.exceptions import AppRegistryNotReady
settings.configure(
    INSTALLED_APPS=[
        "django.contrib.admin.apps.SimpleAdminConfig",  # no autodiscovery of admin modules
        "django.contrib.contenttypes", "django.contrib.auth", "django.contrib.messages",
        "django.contrib.sessions", "messagebus",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)
name = sys.argv[1]
try:
    importlib.import_module(name)  # before anything else of messagebus
except AppRegistryNotReady:
    # It needs the models: load them, and nothing else (ready() would import more).
    for key in [key for key in sys.modules if key.startswith("messagebus")]:
        del sys.modules[key]
    from messagebus.apps import MessagebusConfig
    MessagebusConfig.ready = lambda self: None
    django.setup()
    if name not in ("messagebus.apps", "messagebus.models"):  # what setup is for
        assert name not in sys.modules, f"setting up Django imported {name}"
    importlib.import_module(name)
"""


def test_each_module_imports_alone_first_in_a_fresh_interpreter():
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-c", FIRST, name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in MODULES
    }
    failed = {}
    for name, process in runs.items():
        _, stderr = process.communicate(timeout=120)
        if process.returncode:
            failed[name] = stderr.strip().splitlines()[-1]
    assert not failed, failed


@pytest.mark.parametrize("name", ["messagebus.delivery.run", "messagebus.executors.inline"])
def test_the_check_reads_the_code_as_it_is(name):
    assert name in MODULES
    assert imported_by(PACKAGE / (name.removeprefix("messagebus.").replace(".", "/") + ".py"))
