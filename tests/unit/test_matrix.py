"""The supported Django and Python pairs, written once in noxfile.py: the package's metadata,
requirements.txt's default pair and docs/production.md's table say the same."""

from __future__ import annotations

import ast
import re
import tomllib
from typing import Any

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import ROOT


def noxfile_constant(name: str) -> Any:
    """A literal assigned at the top of noxfile.py (read, not imported: nox is not installed in
    the environments it makes)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"noxfile.py assigns no {name}")


DJANGO = noxfile_constant("DJANGO")
PYTHONS = noxfile_constant("PYTHONS")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_classifiers_name_the_django_and_python_versions_the_matrix_runs():
    classifiers = PROJECT["classifiers"]
    djangos = {
        c.rsplit(" :: ", 1)[1] for c in classifiers if c.startswith("Framework :: Django ::")
    }
    pythons = {
        c.rsplit(" :: ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert djangos == set(DJANGO)
    assert pythons == {python for line in PYTHONS.values() for python in line}
    assert PROJECT["requires-python"] == f">={min(pythons, key=Version)}"


def test_the_django_range_takes_each_release_the_matrix_runs_and_no_later_line():
    [django] = [r for r in map(Requirement, PROJECT["dependencies"]) if r.name == "Django"]
    for release in DJANGO.values():
        assert django.specifier.contains(release), release
    major, minor = max(Version(line).release for line in DJANGO)
    assert not django.specifier.contains(f"{major}.{minor + 1}")
    assert not django.specifier.contains("5.1.15")


def test_the_default_pair_is_the_one_requirements_txt_pins():
    pins = (ROOT / "requirements.txt").read_text()
    [pinned] = re.findall(r"^Django==(\S+)$", pins, re.MULTILINE)
    assert DJANGO[pinned.rsplit(".", 1)[0]] == pinned
    assert pinned.startswith("5.2.")


def test_the_production_page_shows_the_matrix_as_run():
    page = (ROOT / "docs" / "production.md").read_text()
    rows = re.findall(r"^\| (\d+\.\d+)[^|]* \| (\d+\.\d+\.\d+) \| ([^|]+) \|", page, re.MULTILINE)
    assert {line: (release, pythons.strip()) for line, release, pythons in rows} == {
        line: (release, ", ".join(PYTHONS[line])) for line, release in DJANGO.items()
    }


def test_ci_meets_every_django_line_and_every_python():
    covering = [*noxfile_constant("COVERING"), noxfile_constant("DEFAULT")]
    pairs = {(line, python) for line, pythons in PYTHONS.items() for python in pythons}
    assert set(covering) <= pairs
    assert {line for line, _ in covering} == set(DJANGO)
    assert {python for _, python in covering} == {p for ps in PYTHONS.values() for p in ps}
