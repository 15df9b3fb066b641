"""The fast tier of the suite on every supported Django and Python pair.

``nox -l`` lists the pairs; ``nox`` runs them all; ``nox -s "tests(django6.1-py3.13)"`` one;
``nox -t django6.1`` those of a Django line; ``nox -t others`` all but the default pair, which
``make test`` runs, and mypy on Django 6.1's own types (``nox -s typecheck``); ``nox -t ci``
the pairs CI runs beside the default one (``COVERING``), and mypy.
Each pair installs requirements.txt's pins with Django replaced by that
line's release and, from Django 6.0, without the django-tasks backport (the bus uses
``django.tasks``). The fast tier is the SQLite suite without the tests marked ``packaging``
(wheels built and installed); it needs no service. Arguments after ``--`` go to pytest in
place of ``tests``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.download_python = "never"  # the interpreters this machine has, or none
nox.options.error_on_missing_interpreters = True

REQUIREMENTS = Path(__file__).parent / "requirements.txt"

# The release of each supported Django line that the matrix installs, and the Pythons it
# supports. The default pair (Django 5.2 on Python 3.11) is requirements.txt's.
DJANGO = {"5.2": "5.2.19", "6.0": "6.0.10", "6.1": "6.1.3"}
PYTHONS = {"5.2": ["3.11", "3.12", "3.13"], "6.0": ["3.12", "3.13"], "6.1": ["3.12", "3.13"]}
PAIRS = [(django, python) for django, pythons in PYTHONS.items() for python in pythons]
DEFAULT = ("5.2", "3.11")  # make test's; the others are tagged "others"
# With the default pair, every supported Django line and every Python at least once: the pairs
# CI runs (tagged "ci"); the rest add combinations only, and run with ``nox -t others``.
COVERING = [("6.0", "3.12"), ("6.1", "3.13")]

# Only on the Django lines without django.tasks.
BACKPORTS = {"django-tasks"}

# mypy against the newest Django line's own types (make lint checks against 5.2's).
TYPECHECK = ("6.1", "3.13")
STUBS = ["django-stubs==6.1.2", "django-stubs-ext==6.1.2"]
DEV = Path(__file__).parent / "requirements-dev.txt"


def version(line: str) -> tuple[int, ...]:
    return tuple(int(part) for part in line.split("."))


def pyenv_versions(root: Path) -> list[str]:
    """pyenv's CPython installations, the newest of each minor version first."""
    found = [path.name for path in (root / "versions").glob("3.*") if (path / "bin").is_dir()]
    found = [name for name in found if re.fullmatch(r"3\.\d+\.\d+", name)]
    return sorted(found, key=version, reverse=True)


# Behind pyenv's shims, python3.12 runs only if pyenv is told that version is active: make
# every installed one active for this run, unless the caller chose (PYENV_VERSION).
if os.environ.get("PYENV_ROOT") and "PYENV_VERSION" not in os.environ:
    os.environ["PYENV_VERSION"] = ":".join(pyenv_versions(Path(os.environ["PYENV_ROOT"])))


def requirement_name(line: str) -> str:
    """The normalized name a requirements.txt line installs (``psycopg[binary]==3`` -> psycopg)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    assert match, line
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def requirements(django: str) -> list[str]:
    """requirements.txt's pins for a Django line: its Django, and the backport if it needs it."""
    pins = [f"Django=={DJANGO[django]}"]
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = requirement_name(line)
        if name == "django" or (name in BACKPORTS and version(django) >= (6, 0)):
            continue
        pins.append(line)
    return pins


@nox.session
@nox.parametrize(
    "django,python",
    PAIRS,
    ids=[f"django{django}-py{python}" for django, python in PAIRS],
    tags=[
        [
            f"django{django}",
            f"py{python}",
            *(["others"] if (django, python) != DEFAULT else []),
            *(["ci"] if (django, python) in COVERING else []),
        ]
        for django, python in PAIRS
    ],
)
def tests(session: nox.Session, django: str) -> None:
    """The fast tier on one Django and Python pair."""
    session.install("--quiet", *requirements(django))
    session.run("python", "-m", "django", "--version")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not packaging",
        *(session.posargs or ["tests"]),
        env={"DATABASE_URL": None, "CELERY_BROKER_URL": None, "REDIS_URL": None},  # SQLite
    )


@nox.session(python=TYPECHECK[1], tags=["typecheck", "others", "ci"])
def typecheck(session: nox.Session) -> None:
    """mypy (strict) on Django 6.1 with its stubs; the code reads django.tasks there."""
    typing = [
        line for line in DEV.read_text().splitlines()
        if line.startswith(("mypy==", "djangorestframework-stubs=="))
    ]  # fmt: skip
    session.install("--quiet", *requirements(TYPECHECK[0]), *typing, *STUBS)
    session.run("mypy", "--always-true", "BUILTIN_TASKS")
